<?php

// Autoloader for applications that do not use Composer: require this file once.
// (With Composer, composer.json maps the same Switchboard\ namespace to src/.)

declare(strict_types=1);

spl_autoload_register(static function (string $class): void {
    if (str_starts_with($class, 'Switchboard\\')) {
        $file = __DIR__ . '/src/' . str_replace('\\', '/', substr($class, strlen('Switchboard\\'))) . '.php';
        if (is_file($file)) {
            require $file;
        }
    }
});
