"""Configuration: YAML with line numbers, typed models, precise errors."""

from agent.config.errors import ConfigError, ConfigIssue
from agent.config.identity import device_code, gateway_code, resolved_code
from agent.config.loader import check_config_command, load_config
from agent.config.models import AgentConfig, DeviceConfig, DeviceKind, SecretRef
from agent.config.secrets import SecretError, read_secret, redact

__all__ = [
    "AgentConfig",
    "ConfigError",
    "ConfigIssue",
    "DeviceConfig",
    "DeviceKind",
    "SecretError",
    "SecretRef",
    "check_config_command",
    "device_code",
    "gateway_code",
    "load_config",
    "read_secret",
    "redact",
    "resolved_code",
]
