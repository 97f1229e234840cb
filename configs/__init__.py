"""Config modules: each `cfg_*.py` defines a `cfg` namespace; load them with utils.config.load_config."""
