<?php
/*
 * Publish to every browser from a plain PHP script, through ZeroMQ.
 *
 *     php publish.php "Hello from PHP"                 # PUSH: the reliable way
 *     php publish.php --pub "Hello from PHP"           # PUB: the talk's way, with a settle wait
 *     php publish.php --channel=news '{"title": "hi"}' # a publish command to one channel
 *
 * The script sends one ZeroMQ message. A message that is not a command goes to the
 * gateway's [zeromq] default target ("endpoint:/chat" in examples/sockway.toml: every
 * client of the /chat broadcast endpoint gets it) byte for byte: '{"title": "hi"}'
 * arrives as that text, spaces and all. Commands (--channel) are run by the PULL socket
 * only: with --pub, the SUB socket delivers them as text too.
 *
 * PUSH or PUB?
 *
 * The talk connected a PUB socket to the gateway's SUB socket and sent at once. That
 * message is lost: connect() only starts connecting, and a PUB socket drops every message
 * for which no subscriber has told it "I subscribe" yet. The gateway's subscription comes
 * back over the new TCP connection a few milliseconds later, long after a script that
 * sends right after connect() has dropped its message ("slow joiner" in the ZeroMQ guide).
 *
 * - Default, PUSH to the gateway's PULL socket ([zeromq] pull): a PUSH socket queues what
 *   is sent before the connection is up and delivers it once it is. Right for a
 *   fire-and-forget script: every run delivers, as long as the gateway is reachable
 *   within LINGER_MS.
 * - --pub, PUB to the gateway's SUB socket ([zeromq] sub): the talk's pattern. It works
 *   only because the script sleeps --settle milliseconds (default 200) between connect()
 *   and send(), to give the subscription time to arrive. On a loaded machine or a slow
 *   network 200 ms may not be enough; nothing tells the script. --settle=0 shows the loss
 *   (a race the script practically always loses; it wins only if it happens to be
 *   descheduled between connect() and send() for long enough).
 *
 * Neither socket answers: the script cannot know that the gateway accepted the message.
 * When you need to know, use the HTTP API (examples/shell/publish.sh).
 */

const DEFAULT_PULL = 'tcp://127.0.0.1:5557';
const DEFAULT_SUB = 'tcp://127.0.0.1:5555';
const DEFAULT_SETTLE_MS = 200;
// How long the end of the script waits for a queued message to leave (ZeroMQ's LINGER).
// ZeroMQ's default is to wait forever, which would hang the script while the gateway is
// down; after this long the message is dropped and the script ends.
const LINGER_MS = 2000;

function usage(string $error = ''): void
{
    $out = $error === '' ? STDOUT : STDERR;
    if ($error !== '') {
        fwrite($out, "publish.php: $error\n");
    }
    fwrite($out, <<<TEXT
usage: php publish.php [--pub [--settle=MS]] [--to=ADDRESS] [--channel=NAME] MESSAGE

Sends MESSAGE to the sockway gateway over ZeroMQ. Without --channel it goes to the
gateway's [zeromq] default target (a broadcast endpoint or a channel).

  --to=ADDRESS    the gateway's socket (default: PULL at tcp://127.0.0.1:5557,
                  or SUB at tcp://127.0.0.1:5555 with --pub)
  --pub           connect a PUB socket to the gateway's SUB socket, as in the talk
  --settle=MS     with --pub: milliseconds to wait between connecting and sending
                  (default 200; 0 sends at once: the message is almost always lost)
  --channel=NAME  send {"op": "publish", "channel": NAME, "data": MESSAGE} instead

TEXT);
    exit($error === '' ? 0 : 2);
}

if (!extension_loaded('zmq')) {
    fwrite(STDERR, "publish.php: the zmq extension is not loaded (Debian: apt-get install php-zmq)\n");
    exit(1);
}

$rest = 0;
$options = getopt('h', ['help', 'pub', 'settle:', 'to:', 'channel:'], $rest);
if (isset($options['h']) || isset($options['help'])) {
    usage();
}
$args = array_slice($argv, $rest);
if (count($args) !== 1) {
    usage(count($args) === 0 ? 'no MESSAGE given' : 'give the MESSAGE as one argument (quote it)');
}
$message = $args[0];

$pub = isset($options['pub']);
$settle = DEFAULT_SETTLE_MS;
if (isset($options['settle'])) {
    if (!$pub) {
        usage('--settle only applies to --pub');
    }
    if (!ctype_digit((string) $options['settle'])) {
        usage('--settle must be a whole number of milliseconds');
    }
    $settle = (int) $options['settle'];
}
$address = $options['to'] ?? ($pub ? DEFAULT_SUB : DEFAULT_PULL);

if (isset($options['channel'])) {
    // A command: the data is the message parsed as JSON when it is JSON, else the text.
    $data = json_decode($message, true);
    if ($data === null && json_last_error() !== JSON_ERROR_NONE) {
        $data = $message;
    }
    $frame = json_encode(['op' => 'publish', 'channel' => $options['channel'], 'data' => $data],
        JSON_UNESCAPED_SLASHES | JSON_UNESCAPED_UNICODE | JSON_THROW_ON_ERROR);
} else {
    $frame = $message;
}

try {
    $context = new ZMQContext(1, false);
    $socket = $context->getSocket($pub ? ZMQ::SOCKET_PUB : ZMQ::SOCKET_PUSH);
    $socket->setSockOpt(ZMQ::SOCKOPT_LINGER, LINGER_MS);
    $socket->connect($address);
    if ($pub && $settle > 0) {
        usleep($settle * 1000);  // let the gateway's subscription reach this PUB socket
    }
    $socket->send($frame);
} catch (ZMQException $e) {
    fwrite(STDERR, "publish.php: ZeroMQ error on $address: {$e->getMessage()}\n");
    exit(1);
}
// Closing the socket and the context waits (at most LINGER_MS) for the message to leave.
unset($socket, $context);
