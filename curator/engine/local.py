"""The local engine: the stages run in this process, batched across the classes of a group."""

from __future__ import annotations

from curator import stages
from curator.engine.base import Engine


class LocalEngine(Engine):
    """Runs ``stages.run_group`` in this process with the models it loaded."""

    name = "local"

    def _stream(self, labels, state, rounds=None):
        return stages.run_group(self.generator, self.detector, self.data, self.config, labels, state, rounds)

    def _real_features(self):
        return stages.real_features(self.detector, self.data, self.config.seed, self.config.real_sample)
