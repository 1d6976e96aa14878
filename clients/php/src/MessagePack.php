<?php

declare(strict_types=1);

namespace Switchboard;

/**
 * A small MessagePack encoder in plain PHP (no extension), for token claims and test frames.
 *
 * It always writes the shortest form, like the Rust side (rmp), so the bytes it produces are
 * the canonical ones the SPEC.md vectors show. PHP strings are written as MessagePack `str`
 * (they must be UTF-8); wrap raw bytes with MessagePack::bin(). A list (array_is_list) is an
 * array, any other PHP array a map.
 */
final class MessagePack
{
    public static function encode(mixed $value): string
    {
        return match (true) {
            $value === null => "\xc0",
            $value === false => "\xc2",
            $value === true => "\xc3",
            is_int($value) => self::int($value),
            is_float($value) => "\xcb" . pack('E', $value),
            is_string($value) => self::str($value),
            $value instanceof Binary => self::binBytes($value->bytes),
            is_array($value) => array_is_list($value) ? self::list($value) : self::map($value),
            default => throw new \InvalidArgumentException('cannot encode ' . get_debug_type($value) . ' as MessagePack'),
        };
    }

    /** Marks bytes to be written as MessagePack `bin` rather than `str`. */
    public static function bin(string $bytes): Binary
    {
        return new Binary($bytes);
    }

    private static function int(int $v): string
    {
        if ($v >= 0) {
            return match (true) {
                $v <= 0x7f => chr($v),
                $v <= 0xff => "\xcc" . chr($v),
                $v <= 0xffff => "\xcd" . pack('n', $v),
                $v <= 0xffffffff => "\xce" . pack('N', $v),
                default => "\xcf" . pack('J', $v),
            };
        }
        return match (true) {
            $v >= -32 => chr($v & 0xff),
            $v >= -128 => "\xd0" . chr($v & 0xff),
            $v >= -32768 => "\xd1" . pack('n', $v & 0xffff),
            $v >= -2147483648 => "\xd2" . pack('N', $v & 0xffffffff),
            default => "\xd3" . pack('J', $v),
        };
    }

    private static function str(string $s): string
    {
        if (preg_match('//u', $s) !== 1) {
            throw new \InvalidArgumentException('MessagePack str must be UTF-8; use MessagePack::bin() for bytes');
        }
        $n = strlen($s);
        return match (true) {
            $n <= 31 => chr(0xa0 | $n),
            $n <= 0xff => "\xd9" . chr($n),
            $n <= 0xffff => "\xda" . pack('n', $n),
            default => "\xdb" . pack('N', $n),
        } . $s;
    }

    private static function binBytes(string $b): string
    {
        $n = strlen($b);
        return match (true) {
            $n <= 0xff => "\xc4" . chr($n),
            $n <= 0xffff => "\xc5" . pack('n', $n),
            default => "\xc6" . pack('N', $n),
        } . $b;
    }

    /** @param list<mixed> $a */
    private static function list(array $a): string
    {
        $n = count($a);
        $out = match (true) {
            $n <= 15 => chr(0x90 | $n),
            $n <= 0xffff => "\xdc" . pack('n', $n),
            default => "\xdd" . pack('N', $n),
        };
        foreach ($a as $v) {
            $out .= self::encode($v);
        }
        return $out;
    }

    /** @param array<array-key, mixed> $m */
    private static function map(array $m): string
    {
        $n = count($m);
        $out = match (true) {
            $n <= 15 => chr(0x80 | $n),
            $n <= 0xffff => "\xde" . pack('n', $n),
            default => "\xdf" . pack('N', $n),
        };
        foreach ($m as $k => $v) {
            $out .= self::encode($k) . self::encode($v);
        }
        return $out;
    }
}

