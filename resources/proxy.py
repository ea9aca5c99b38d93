"""The proxy LM whose per-sample gradients define G-Vendi; loaded once per step process."""

from __future__ import annotations

import polars as pl
from dagster import ConfigurableResource

from prismatic.gradients.featureset import FeatureSet, Shard
from prismatic.gradients.proxy import Proxy, compute_features, load_proxy
from resources.home import PrismHome

_PROXIES: dict[str, Proxy] = {}


class ProxyResource(ConfigurableResource):
    """Gradient features of samples under `features:` of prism.yaml."""

    prism_home: PrismHome

    def load(self) -> Proxy:
        """The configured proxy, loaded once per process."""
        config = self.prism_home.config()
        key = f"{config.features.proxy}|{config.features.model_dtype}|{config.features.device}"
        if key not in _PROXIES:
            _PROXIES[key] = load_proxy(config.features, config.models_dir)
        return _PROXIES[key]

    def featurize(self, samples: pl.DataFrame, shard: Shard | None = None) -> tuple[FeatureSet, str]:
        """Features of `samples` (`shard` = (index, count): only that shard's rows) and the proxy's name."""
        config = self.prism_home.config()
        return compute_features(samples, config.features, config.models_dir, proxy=self.load(),
                                progress=False, shard=shard)
