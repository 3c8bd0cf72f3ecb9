"""Configuration: YAML with line numbers, typed models, precise errors."""
