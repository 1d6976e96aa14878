<?php

declare(strict_types=1);

use Switchboard\MessagePack;

test('msgpack: nil, booleans and every integer width, shortest form', function (): void {
    $cases = [
        ['c0', null], ['c2', false], ['c3', true],
        ['00', 0], ['7f', 127], ['cc 80', 128], ['cc ff', 255], ['cd 01 00', 256], ['cd ff ff', 65535],
        ['ce 00 01 00 00', 65536], ['ce ff ff ff ff', 4294967295], ['cf 00 00 00 01 00 00 00 00', 4294967296],
        ['ce 65 53 f1 00', 1700000000],
        ['ff', -1], ['e0', -32], ['d0 df', -33], ['d0 80', -128], ['d1 ff 7f', -129], ['d2 ff ff 7f ff', -32769],
        ['cb 3f f8 00 00 00 00 00 00', 1.5],
    ];
    foreach ($cases as [$hex, $v]) {
        assert_same(hexb($hex), MessagePack::encode($v), var_export($v, true));
    }
});

test('msgpack: str lengths switch at 32, 256 and 65536 bytes', function (): void {
    assert_same(hexb("a0"), MessagePack::encode(''));
    assert_same("\xbf" . str_repeat('x', 31), MessagePack::encode(str_repeat('x', 31)));
    assert_same("\xd9\x20" . str_repeat('x', 32), MessagePack::encode(str_repeat('x', 32)));
    assert_same("\xda\x01\x00" . str_repeat('x', 256), MessagePack::encode(str_repeat('x', 256)));
    assert_same("\xdb\x00\x01\x00\x00", substr(MessagePack::encode(str_repeat('x', 65536)), 0, 5));
    assert_same(hexb("a2 c3 a9"), MessagePack::encode("\u{e9}"), 'UTF-8 bytes are counted');
    assert_throws(\InvalidArgumentException::class, fn () => MessagePack::encode("\xff"), '/UTF-8/');
});

test('msgpack: bin, arrays and maps', function (): void {
    assert_same(hexb('c4 02 01 02'), MessagePack::encode(MessagePack::bin("\x01\x02")));
    assert_same(hexb('c5 01 00'), substr(MessagePack::encode(MessagePack::bin(str_repeat("\0", 256))), 0, 3));
    assert_same(hexb('90'), MessagePack::encode([]));
    assert_same("\x9f" . str_repeat("\x00", 15), MessagePack::encode(array_fill(0, 15, 0)));
    assert_same("\xdc\x00\x10" . str_repeat("\x00", 16), MessagePack::encode(array_fill(0, 16, 0)));
    assert_same(hexb("82 a1 'a' 01 a1 'b' 92 c0 c3"), MessagePack::encode(['a' => 1, 'b' => [null, true]]));
    assert_throws(\InvalidArgumentException::class, fn () => MessagePack::encode(new \stdClass()));
});

test('msgpack: wire frames come out byte for byte', function (): void {
    // Same expected bytes as clients/js/test/codec.test.js, from src/wire/frame.rs layouts.
    assert_same(hexb('92 03 01'), MessagePack::encode([3, 1]), 'ping id 1');
    assert_same(hexb("94 01 01 a7 'post:42' a3 'tok'"), MessagePack::encode([1, 1, 'post:42', 'tok']), 'subscribe');
    assert_same(
        hexb("97 13 a7 'post:42' 05 a2 'e1' cf 00 00 01 8b cf e5 68 7b a1 'k' c4 02 01 02"),
        MessagePack::encode([19, 'post:42', 5, 'e1', 1700000000123, 'k', MessagePack::bin("\x01\x02")]),
        'envelope',
    );
});
