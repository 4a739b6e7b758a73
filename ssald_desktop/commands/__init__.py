"""Sub-commands of ssald-cli, one module each, each with ``register(subparsers)``."""
