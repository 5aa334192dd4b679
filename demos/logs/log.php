<?php
// Ship a log line to the browsers watching the "logs" channel (demos/www/logs.html):
// the PHP side of the talk's realtime logging, through the gateway's ZeroMQ PULL socket.
//
//   php demos/logs/log.php warning "disk almost full"
//
// A PUSH socket keeps the message until its connection is up, so nothing is lost
// even though the script connects, sends and exits at once.

function sockway_log(string $level, string $message, string $logger = "php", string $channel = "logs",
                     string $address = "tcp://127.0.0.1:5557"): void
{
    static $socket = null;
    if ($socket === null) {
        $socket = (new ZMQContext())->getSocket(ZMQ::SOCKET_PUSH);
        $socket->setSockOpt(ZMQ::SOCKOPT_LINGER, 2000);
        $socket->connect($address);
    }
    $record = [
        "time" => microtime(true),
        "level" => strtoupper($level),
        "logger" => $logger,
        "message" => $message,
        "process" => getmypid(),
    ];
    $socket->send(json_encode(["op" => "publish", "channel" => $channel, "data" => $record]));
}

if (PHP_SAPI === "cli" && realpath($argv[0]) === __FILE__) {
    if ($argc < 3) {
        fwrite(STDERR, "usage: php log.php LEVEL MESSAGE [ADDRESS]\n");
        exit(2);
    }
    sockway_log($argv[1], $argv[2], "php", "logs", $argv[3] ?? "tcp://127.0.0.1:5557");
}
