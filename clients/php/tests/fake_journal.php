<?php

// A stand-in for the journal's POST /v1/envelopes, for `php -S` in JournalPublisherTest:
// checks the credential, echoes what it parsed, and answers like the journal would.

declare(strict_types=1);

header('Content-Type: application/json');
$fail = static function (int $status, string $code, string $message): void {
    http_response_code($status);
    echo json_encode(['error' => $code, 'message' => $message]);
};
if ($_SERVER['REQUEST_METHOD'] !== 'POST' || $_SERVER['REQUEST_URI'] !== '/v1/envelopes') {
    $fail(404, 'not_found', 'no route');
    return;
}
if (($_SERVER['HTTP_AUTHORIZATION'] ?? '') !== 'Bearer app-secret') {
    $fail(401, 'bad_credential', 'unknown application credential');
    return;
}
$body = json_decode((string) file_get_contents('php://input'), true);
if (!is_array($body) || !isset($body['topic'], $body['kind'])) {
    $fail(400, 'bad_request', 'topic and kind are required');
    return;
}
if ($body['topic'] === 'too:big') {
    $fail(413, 'too_large', 'payload too large');
    return;
}
$payload = array_key_exists('payload_base64', $body)
    ? base64_decode($body['payload_base64'], true)
    : json_encode($body['payload'], JSON_UNESCAPED_SLASHES | JSON_UNESCAPED_UNICODE);
http_response_code(201);
// The id carries what was stored, so the test can see it.
echo json_encode(['topic' => $body['topic'], 'seq' => 7, 'id' => bin2hex((string) $payload), 'ts' => 1700000000123]);
