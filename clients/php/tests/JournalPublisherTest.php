<?php

declare(strict_types=1);

use Switchboard\JournalPublisher;
use Switchboard\Published;
use Switchboard\PublishException;

/** A transport that records the request and answers [$status, $body]. */
function recording_transport(int $status, string $body, ?array &$seen): \Closure
{
    return function (string $url, string $method, array $headers, string $payload) use ($status, $body, &$seen): array {
        $seen = ['url' => $url, 'method' => $method, 'headers' => $headers, 'body' => $payload];
        return [$status, $body];
    };
}

test('publisher: POST /v1/envelopes with the credential and a JSON payload', function (): void {
    $seen = null;
    $answer = '{"topic":"post:42","seq":12,"id":"01J0","ts":1700000000123}';
    $p = new JournalPublisher('http://journal.test/', 'app-secret', transport: recording_transport(201, $answer, $seen));
    $r = $p->publish('post:42', 'comment.created', ['id' => 9, 'body' => "h\u{e9}llo / <b>", 'score' => 1.0]);
    assert_true($r instanceof Published, 'Published');
    assert_same([12, '01J0', 1700000000123, 'post:42'], [$r->seq, $r->id, $r->ts, $r->topic]);
    assert_same('http://journal.test/v1/envelopes', $seen['url']);
    assert_same('POST', $seen['method']);
    assert_same('Bearer app-secret', $seen['headers']['Authorization']);
    assert_same('application/json', $seen['headers']['Content-Type']);
    assert_same('{"topic":"post:42","kind":"comment.created","payload":{"id":9,"body":"h' . "\u{e9}" . 'llo / <b>","score":1.0}}', $seen['body']);
});

test('publisher: raw bytes go as payload_base64', function (): void {
    $seen = null;
    $p = new JournalPublisher('http://j', 'app-secret', transport: recording_transport(201, '{"topic":"t","seq":1,"id":"a","ts":5}', $seen));
    $p->publishBytes('t', 'blob', "\x00\xff\x10");
    assert_same('{"topic":"t","kind":"blob","payload_base64":"AP8Q"}', $seen['body']);
});

test('publisher: journal errors become PublishException with status and code', function (): void {
    $cases = [
        [401, '{"error":"bad_credential","message":"no"}', 'bad_credential', false],
        [400, '{"error":"bad_topic","message":"topic is empty"}', 'bad_topic', false],
        [413, '{"error":"too_large","message":"1 MiB max"}', 'too_large', false],
        [503, 'Service Unavailable', 'http_503', true],
        [0, 'Connection refused', 'network', true],
        [201, '{"seq":"nope"}', 'bad_answer', false],
    ];
    foreach ($cases as [$status, $body, $code, $retryable]) {
        $seen = null;
        $p = new JournalPublisher('http://j', 'app-secret', transport: recording_transport($status, $body, $seen));
        $e = assert_throws(PublishException::class, fn () => $p->publish('t', 'k', 1), null, "status $status");
        assert_same([$status, $code, $retryable], [$e->status, $e->errorCode, $e->isRetryable()], "status $status");
    }
});

test('publisher: bad topic, kind or payload are refused before sending', function (): void {
    $seen = null;
    $p = new JournalPublisher('http://j', 'app-secret', transport: recording_transport(201, '{}', $seen));
    assert_throws(\InvalidArgumentException::class, fn () => $p->publish('bad topic', 'k', 1), '/topic/');
    assert_throws(\InvalidArgumentException::class, fn () => $p->publish('t', '', 1), '/kind/');
    assert_throws(\InvalidArgumentException::class, fn () => $p->publish('t', str_repeat('k', 129), 1), '/kind/');
    assert_throws(\InvalidArgumentException::class, fn () => $p->publish('t', 'k', "\xff"), '/JSON/');
    assert_throws(\InvalidArgumentException::class, fn () => $p->publishBytes('t', 'k', str_repeat('x', 1024 * 1024)), '/limit/');
    assert_same(null, $seen, 'nothing sent');
    assert_throws(\InvalidArgumentException::class, fn () => new JournalPublisher('http://j', ''));
});

/** Starts `php -S` with the fake journal on a free loopback port; returns [process, base URL]. */
function start_fake_journal(): array
{
    $probe = stream_socket_server('tcp://127.0.0.1:0');
    $port = (int) substr(strrchr(stream_socket_get_name($probe, false), ':'), 1);
    fclose($probe);
    $proc = proc_open([PHP_BINARY, '-S', "127.0.0.1:$port", __DIR__ . '/fake_journal.php'], [1 => ['file', '/dev/null', 'w'], 2 => ['file', '/dev/null', 'w']], $pipes);
    for ($i = 0; $i < 100; $i++) { // up to 5 s for the server to listen
        $c = @fsockopen('127.0.0.1', $port, $errno, $errstr, 0.1);
        if ($c !== false) {
            fclose($c);
            return [$proc, "http://127.0.0.1:$port"];
        }
        usleep(50_000);
    }
    proc_terminate($proc);
    throw new \RuntimeException("php -S did not start on port $port");
}

test('publisher: curl and stream transports against a local HTTP server', function (): void {
    [$proc, $url] = start_fake_journal();
    try {
        $transports = ['streams' => JournalPublisher::streamTransport(2.0)];
        if (extension_loaded('curl')) {
            $transports['curl'] = JournalPublisher::curlTransport(2.0);
        }
        foreach ($transports as $name => $t) {
            $p = new JournalPublisher($url, 'app-secret', transport: $t);
            $r = $p->publish('post:42', 'comment.created', ['body' => 'hi']);
            assert_same([7, bin2hex('{"body":"hi"}')], [$r->seq, $r->id], "$name: 201");
            $r = $p->publishBytes('post:42', 'raw', "\x00\x01");
            assert_same('0001', $r->id, "$name: bytes");
            $e = assert_throws(PublishException::class, fn () => $p->publish('too:big', 'k', 1), null, $name);
            assert_same([413, 'too_large'], [$e->status, $e->errorCode], "$name: 413");
            $bad = new JournalPublisher($url, 'wrong', transport: $t);
            $e = assert_throws(PublishException::class, fn () => $bad->publish('t', 'k', 1), null, $name);
            assert_same([401, 'bad_credential'], [$e->status, $e->errorCode], "$name: 401");
        }
        assert_true(isset($transports['curl']), 'php-curl is installed (clients/test.sh installs it)');
    } finally {
        proc_terminate($proc);
        proc_close($proc);
    }
    // Nothing listens there any more: no answer is status 0.
    foreach ([JournalPublisher::streamTransport(1.0), null] as $t) {
        $p = new JournalPublisher($url, 'app-secret', timeout: 1.0, transport: $t);
        $e = assert_throws(PublishException::class, fn () => $p->publish('t', 'k', 1));
        assert_same([0, 'network'], [$e->status, $e->errorCode]);
    }
});
