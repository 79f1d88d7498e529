"""The standalone aggregator process (``secagg serve``): configuration, rounds, shutdown, logs."""

from secagg.service.aggregator import Aggregator
from secagg.service.config import ServiceConfig, load_config

__all__ = ["Aggregator", "ServiceConfig", "load_config"]
