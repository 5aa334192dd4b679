<?php
/*
 * A chat whose whole backend is this file, run by PHP's built-in web server:
 *
 *     export SOCKWAY_WEBHOOK_SECRET=change-me    # the gateway signs with the same secret
 *     php -S 127.0.0.1:8090 index.php
 *
 * The gateway (sockway.toml next to this file) holds the browsers' connections on its
 * /chat endpoint, in "app" mode: each client's open, message and close becomes an event,
 * and the events are POSTed here in batches:
 *
 *     POST /   X-Sockway-Signature: sha256=<HMAC-SHA256 of the body>
 *     {"events": [{"type": "open", "conn": "1f2e.3", "endpoint": "/chat", ...}, ...]}
 *
 * The answer carries the commands the gateway then runs, in order:
 *
 *     {"commands": [{"op": "subscribe", "conn": "1f2e.3", "channel": "chat"}, ...]}
 *
 * So there is no queue, no long-running PHP process and no state here: every request is
 * handled on its own, as PHP likes it. What the clients receive (JSON text):
 *
 *     {"type": "welcome", "user": "alice", "text": "Welcome, alice! ..."}  to the newcomer
 *     {"type": "joined", "user": "alice"}                                  to the others
 *     {"type": "message", "user": "alice", "conn": "1f2e.3", "text": "hi"} to everyone
 *     {"type": "left", "user": "alice"}                                    to the others
 *
 * A client picks its name with ?name=alice on the URL it connects to; a client sends
 * either a plain line of text or {"text": "..."}.
 */

declare(strict_types=1);

const ENDPOINT = '/chat';   // the gateway's endpoint served here
const CHANNEL = 'chat';     // the channel every member is subscribed to
const MAX_NAME = 32;        // characters
const MAX_TEXT = 1000;      // characters

function respond(int $status, array $body): void
{
    http_response_code($status);
    header('Content-Type: application/json');
    echo json_encode($body, JSON_UNESCAPED_SLASHES | JSON_UNESCAPED_UNICODE | JSON_INVALID_UTF8_SUBSTITUTE), "\n";
}

/** At most $max characters of $text with control characters removed ('' if not UTF-8). */
function clean(string $text, int $max): string
{
    $text = preg_replace('/[\p{Cc}\p{Cf}]+/u', ' ', $text);
    if ($text === null || !preg_match('/^.{0,' . $max . '}/us', trim($text), $m)) {
        return '';
    }
    return trim($m[0]);
}

/** The name a connection asked for (?name=...) or one made from its id. */
function name_of(array $event): string
{
    if (is_string($event['user'] ?? null) && $event['user'] !== '') {
        return $event['user'];       // a name the gateway already knows (a JWT's "sub")
    }
    parse_str((string) ($event['request']['query'] ?? ''), $query);
    $name = is_string($query['name'] ?? null) ? clean($query['name'], MAX_NAME) : '';
    return $name !== '' ? $name : 'guest-' . $event['conn'];
}

/** The commands answering one event. */
function handle(array $event): array
{
    $conn = $event['conn'] ?? null;
    if (($event['endpoint'] ?? null) !== ENDPOINT || !is_string($conn)) {
        return [];
    }
    switch ($event['type'] ?? '') {
        case 'open':
            $name = name_of($event);
            return [
                // The endpoint holds a new client until it is accepted (app_accept = true);
                // accepting also names it: later events carry "user": $name.
                ['op' => 'accept', 'conn' => $conn, 'user' => $name],
                ['op' => 'send', 'conn' => $conn, 'data' => [
                    'type' => 'welcome', 'user' => $name,
                    'text' => "Welcome, $name! Everything you send goes to everyone here.",
                ]],
                // Published before subscribing, so that the others see it, not the newcomer.
                ['op' => 'publish', 'channel' => CHANNEL, 'data' => ['type' => 'joined', 'user' => $name]],
                ['op' => 'subscribe', 'conn' => $conn, 'channel' => CHANNEL],
            ];

        case 'message':
            if (!empty($event['binary']) || !is_string($event['data'] ?? null)) {
                return [];
            }
            $text = $event['data'];
            $json = json_decode($text, true);
            if (is_array($json) && is_string($json['text'] ?? null)) {
                $text = $json['text'];
            }
            $text = clean($text, MAX_TEXT);
            if ($text === '') {
                return [];
            }
            return [['op' => 'publish', 'channel' => CHANNEL, 'data' => [
                'type' => 'message', 'user' => $event['user'] ?? $conn, 'conn' => $conn, 'text' => $text,
            ]]];

        case 'close':
            // "user" is only set once the connection was accepted: others never saw it join.
            if (!is_string($event['user'] ?? null)) {
                return [];
            }
            return [['op' => 'publish', 'channel' => CHANNEL, 'data' => ['type' => 'left', 'user' => $event['user']]]];
    }
    return [];
}

if ($_SERVER['REQUEST_METHOD'] === 'GET') {
    header('Content-Type: text/plain');
    echo "The webhook chat backend: the sockway gateway POSTs its events here.\n";
    return;
}
if ($_SERVER['REQUEST_METHOD'] !== 'POST') {
    header('Allow: GET, POST');
    respond(405, ['error' => 'POST events here']);
    return;
}

$secret = getenv('SOCKWAY_WEBHOOK_SECRET');
if ($secret === false || $secret === '') {
    error_log('webhook-chat: set SOCKWAY_WEBHOOK_SECRET (the [webhook] secret of the gateway)');
    respond(500, ['error' => 'the backend has no secret configured']);
    return;
}

// The signature covers the raw body: check it before decoding anything.
$body = file_get_contents('php://input');
$signature = $_SERVER['HTTP_X_SOCKWAY_SIGNATURE'] ?? '';
if (!hash_equals('sha256=' . hash_hmac('sha256', $body, $secret), $signature)) {
    error_log('webhook-chat: rejected a request with a ' . ($signature === '' ? 'missing' : 'wrong')
        . ' X-Sockway-Signature');
    respond(401, ['error' => 'missing or wrong X-Sockway-Signature']);
    return;
}

$batch = json_decode($body, true);
if (!is_array($batch) || !is_array($batch['events'] ?? null)) {
    respond(400, ['error' => 'expected {"events": [...]}']);
    return;
}
$commands = [];
foreach ($batch['events'] as $event) {
    if (is_array($event)) {
        array_push($commands, ...handle($event));
    }
}
respond(200, ['commands' => $commands]);
