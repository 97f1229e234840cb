"""Project-wide helpers: config loading, the competition metric, checked file reading."""
