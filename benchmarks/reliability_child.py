"""``engage`` with two extra kill points inside training, for the kill-and-rerun harness.

The product's own kill points (:data:`engage.faults.POINTS`) cover ingest, features and
scoring, and ``train:between_models``. Training's inner steps live in ``training/``,
which this harness does not change; it wraps ``training.registry.log_model`` instead:

- ``train:log_model``: the MLflow run is open, its metrics, plots and held-out
  predictions logged, the model not yet logged nor registered;
- ``train:registered``: the model version registered, its alias not yet set.

Run as ``python -m benchmarks.reliability_child <engage arguments>``.
"""

from __future__ import annotations

from engage.faults import fault_point

HARNESS_POINTS = {
    "train:log_model": "MLflow run open with its artifacts, the model not logged",
    "train:registered": "the model version registered, no alias set yet",
}


def install() -> None:
    import training.registry as registry
    import training.train as train

    original = registry.log_model

    def log_model(*args, **kwargs):
        fault_point("train:log_model")
        info = original(*args, **kwargs)
        fault_point("train:registered")
        return info

    registry.log_model = log_model
    train.log_model = log_model


if __name__ == "__main__":
    install()
    from cli.main import app

    app(prog_name="engage")
