"""Configuration: YAML files validated by pydantic, refused with file, line and field."""

from middleware.config.loader import ConfigError, load_settings, load_settings_text
from middleware.config.settings import (
    AnalyserSimulatorSettings,
    ApiSettings,
    AstmInstrumentSettings,
    DemoSettings,
    InstrumentSettings,
    LisSettings,
    LisSimulatorSettings,
    Settings,
    StoreSettings,
    TcpServerTransport,
)

__all__ = [
    "AnalyserSimulatorSettings",
    "ApiSettings",
    "AstmInstrumentSettings",
    "ConfigError",
    "DemoSettings",
    "InstrumentSettings",
    "LisSettings",
    "LisSimulatorSettings",
    "Settings",
    "StoreSettings",
    "TcpServerTransport",
    "load_settings",
    "load_settings_text",
]
