"""The TOML configuration (`hq server start --config`, `hq alloc load`): a pure loader that
both `app` and `cli` use."""
