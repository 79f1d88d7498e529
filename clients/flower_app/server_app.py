"""The ServerApp: FedAvg, with secagg's workflow instead of Flower's ``SecAggPlusWorkflow``."""

from __future__ import annotations

from typing import Any

from flwr.app import Context
from flwr.common import ndarrays_to_parameters
from flwr.server import LegacyContext, ServerConfig
from flwr.server.strategy import FedAvg
from flwr.server.workflow import DefaultWorkflow
from flwr.serverapp import Grid, ServerApp

from clients.flower_app.task import evaluate, initial_parameters, load_data
from secagg.integrations.flower import SecAggWorkflow
from secagg.simulate import default_threshold

TEST = load_data(0, 1)[1]
HISTORY: list[tuple[int, float, float]] = []


def central_evaluate(server_round: int, parameters: Any, config: Any) -> Any:
    loss, acc = evaluate(list(parameters), TEST)
    HISTORY.append((server_round, loss, acc))
    return loss, {"accuracy": acc}


def make_server_app(
    num_clients: int, rounds: int, workflow: SecAggWorkflow | None = None
) -> tuple[ServerApp, SecAggWorkflow]:
    fit_workflow = workflow or SecAggWorkflow(
        num_shares=num_clients,  # full graph for a handful of hospitals
        # the smallest threshold the hospitals' strict policies accept (4 of 5): one may drop
        reconstruction_threshold=default_threshold(num_clients),
        clipping_range=8.0,
        max_weight=1000.0,
        timeout=60.0,
    )
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        strategy = FedAvg(
            fraction_fit=1.0,
            fraction_evaluate=0.0,
            min_fit_clients=num_clients,
            min_available_clients=num_clients,
            initial_parameters=ndarrays_to_parameters(initial_parameters()),
            evaluate_fn=central_evaluate,
        )
        legacy = LegacyContext(
            context=context, config=ServerConfig(num_rounds=rounds), strategy=strategy
        )
        DefaultWorkflow(fit_workflow=fit_workflow)(grid, legacy)

    return app, fit_workflow
