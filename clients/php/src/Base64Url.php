<?php

declare(strict_types=1);

namespace Switchboard;

/** base64url without padding (RFC 4648 section 5), as the token and key files use. */
final class Base64Url
{
    public static function encode(string $bytes): string
    {
        return sodium_bin2base64($bytes, SODIUM_BASE64_VARIANT_URLSAFE_NO_PADDING);
    }

    /** The bytes, or null when $text is not unpadded base64url. */
    public static function decode(string $text): ?string
    {
        if (preg_match('/^[A-Za-z0-9_-]*$/D', $text) !== 1) {
            return null;
        }
        try {
            return sodium_base642bin($text, SODIUM_BASE64_VARIANT_URLSAFE_NO_PADDING);
        } catch (\SodiumException) {
            return null;
        }
    }
}
