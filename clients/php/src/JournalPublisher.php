<?php

declare(strict_types=1);

namespace Switchboard;

/**
 * Publishes envelopes through the journal's HTTP API:
 *
 *     POST {baseUrl}/v1/envelopes
 *     Authorization: Bearer <application credential>      (the journal's shared secret,
 *                                                           not a subscriber token)
 *     {"topic": "...", "kind": "...", "payload": <JSON value>}    or "payload_base64"
 *     201 {"topic", "seq", "id", "ts"}
 *
 * The journal stores the envelope (assigning its seq) before it reaches any router, so a
 * successful publish is never lost. A failed one is not retried here: the API has no
 * idempotency key, and a request whose answer was lost may have been stored.
 */
final class JournalPublisher
{
    public const MAX_KIND_BYTES = 128;
    public const MAX_PAYLOAD_BYTES = 1024 * 1024 - 1024;

    /** @var \Closure(string, string, array<string, string>, string): array{0: int, 1: string} */
    private \Closure $transport;
    private string $baseUrl;

    /**
     * @param string $baseUrl the journal, e.g. http://127.0.0.1:8081 (without /v1)
     * @param string $credential the application credential from the journal config
     * @param float $timeout seconds for the whole request
     * @param (callable(string $url, string $method, array<string, string> $headers, string $body): array{0: int, 1: string})|null $transport
     *   sends one request and returns [status, body]; status 0 when there was no answer.
     *   Default: curl when loaded, else PHP streams.
     */
    public function __construct(string $baseUrl, private readonly string $credential, private readonly float $timeout = 5.0, ?callable $transport = null)
    {
        if ($credential === '') {
            throw new \InvalidArgumentException('the application credential is empty');
        }
        $this->baseUrl = rtrim($baseUrl, '/');
        $this->transport = $transport !== null
            ? \Closure::fromCallable($transport)
            : (extension_loaded('curl') ? self::curlTransport($timeout) : self::streamTransport($timeout));
    }

    /**
     * Publishes a JSON payload (stored as the UTF-8 bytes of its JSON text). Note that PHP's
     * empty array encodes as [] : pass new \stdClass() for an empty object.
     */
    public function publish(string $topic, string $kind, mixed $payload): Published
    {
        return $this->post(['topic' => $topic, 'kind' => $kind, 'payload' => $payload], $topic, $kind, null);
    }

    /** Publishes raw bytes as the payload (sent as payload_base64). */
    public function publishBytes(string $topic, string $kind, string $bytes): Published
    {
        return $this->post(['topic' => $topic, 'kind' => $kind, 'payload_base64' => base64_encode($bytes)], $topic, $kind, strlen($bytes));
    }

    /** @param array<string, mixed> $body */
    private function post(array $body, string $topic, string $kind, ?int $payloadLen): Published
    {
        Topic::check($topic);
        if ($kind === '' || strlen($kind) > self::MAX_KIND_BYTES) {
            throw new \InvalidArgumentException('kind must be 1..' . self::MAX_KIND_BYTES . ' bytes');
        }
        try {
            $json = json_encode($body, JSON_THROW_ON_ERROR | JSON_UNESCAPED_SLASHES | JSON_UNESCAPED_UNICODE | JSON_PRESERVE_ZERO_FRACTION);
            $payloadLen ??= strlen(json_encode($body['payload'], JSON_THROW_ON_ERROR | JSON_UNESCAPED_SLASHES | JSON_UNESCAPED_UNICODE | JSON_PRESERVE_ZERO_FRACTION));
        } catch (\JsonException $e) {
            throw new \InvalidArgumentException('payload cannot be encoded as JSON: ' . $e->getMessage(), 0, $e);
        }
        if ($payloadLen > self::MAX_PAYLOAD_BYTES) {
            throw new \InvalidArgumentException("payload is $payloadLen bytes, above the limit of " . self::MAX_PAYLOAD_BYTES);
        }
        [$status, $text] = ($this->transport)($this->baseUrl . '/v1/envelopes', 'POST', [
            'Authorization' => 'Bearer ' . $this->credential,
            'Content-Type' => 'application/json',
            'Accept' => 'application/json',
        ], $json);
        $answer = json_decode($text, true);
        if ($status === 201 && is_array($answer)
            && is_string($answer['topic'] ?? null) && is_int($answer['seq'] ?? null)
            && is_string($answer['id'] ?? null) && is_int($answer['ts'] ?? null)) {
            return new Published($answer['topic'], $answer['seq'], $answer['id'], $answer['ts']);
        }
        if ($status === 0) {
            throw new PublishException(0, 'network', "journal unreachable: $text");
        }
        if ($status === 201) {
            throw new PublishException($status, 'bad_answer', 'journal answered 201 without topic, seq, id and ts');
        }
        $answer = is_array($answer) ? $answer : [];
        $code = is_string($answer['error'] ?? null) ? $answer['error'] : "http_$status";
        $message = is_string($answer['message'] ?? null) ? $answer['message'] : "journal answered $status";
        throw new PublishException($status, $code, $message, $answer);
    }

    /** @return \Closure(string, string, array<string, string>, string): array{0: int, 1: string} */
    public static function curlTransport(float $timeout = 5.0): \Closure
    {
        return static function (string $url, string $method, array $headers, string $body) use ($timeout): array {
            $h = curl_init($url);
            $lines = [];
            foreach ($headers as $k => $v) {
                $lines[] = "$k: $v";
            }
            $lines[] = 'Expect:'; // no 100-continue round trip for larger bodies
            curl_setopt_array($h, [
                CURLOPT_CUSTOMREQUEST => $method,
                CURLOPT_POSTFIELDS => $body,
                CURLOPT_HTTPHEADER => $lines,
                CURLOPT_RETURNTRANSFER => true,
                CURLOPT_TIMEOUT_MS => (int) ($timeout * 1000),
                CURLOPT_CONNECTTIMEOUT_MS => (int) (min($timeout, 5.0) * 1000),
                CURLOPT_FOLLOWLOCATION => false,
            ]);
            $text = curl_exec($h);
            if ($text === false) {
                $err = curl_error($h);
                curl_close($h);
                return [0, $err];
            }
            $status = (int) curl_getinfo($h, CURLINFO_RESPONSE_CODE);
            curl_close($h);
            return [$status, (string) $text];
        };
    }

    /** @return \Closure(string, string, array<string, string>, string): array{0: int, 1: string} */
    public static function streamTransport(float $timeout = 5.0): \Closure
    {
        return static function (string $url, string $method, array $headers, string $body) use ($timeout): array {
            $lines = '';
            foreach ($headers as $k => $v) {
                $lines .= "$k: $v\r\n";
            }
            $ctx = stream_context_create(['http' => [
                'method' => $method,
                'header' => $lines . 'Content-Length: ' . strlen($body) . "\r\nConnection: close\r\n",
                'content' => $body,
                'timeout' => $timeout,
                'ignore_errors' => true, // read the JSON error body of 4xx/5xx answers
                'follow_location' => 0,
                'protocol_version' => 1.1,
            ]]);
            $text = @file_get_contents($url, false, $ctx);
            $responseHeaders = function_exists('http_get_last_response_headers')
                ? (http_get_last_response_headers() ?? [])
                : ($http_response_header ?? []);
            if ($text === false || $responseHeaders === []) {
                return [0, error_get_last()['message'] ?? 'no answer'];
            }
            $status = preg_match('#^HTTP/\S+\s+(\d{3})#', $responseHeaders[0], $m) === 1 ? (int) $m[1] : 0;
            return [$status, $text];
        };
    }
}
