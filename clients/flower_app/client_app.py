"""The ClientApp: one hospital. secagg's mod replaces Flower's ``secaggplus_mod``."""

from __future__ import annotations

from typing import Any

from flwr.app import Context
from flwr.client import Client, NumPyClient
from flwr.clientapp import ClientApp

from clients.flower_app.task import evaluate, load_data, train
from secagg.integrations.flower import secagg_mod


class HospitalClient(NumPyClient):
    def __init__(self, partition: int, partitions: int) -> None:
        self.train_data, self.test_data = load_data(partition, partitions)

    def fit(self, parameters: Any, config: Any) -> Any:
        new = train(list(parameters), self.train_data)
        loss, _ = evaluate(new, self.train_data)
        return new, len(self.train_data[1]), {"train_loss": loss}

    def evaluate(self, parameters: Any, config: Any) -> Any:
        loss, acc = evaluate(list(parameters), self.test_data)
        return loss, len(self.test_data[1]), {"accuracy": acc}


def client_fn(context: Context) -> Client:
    partition = int(context.node_config["partition-id"])
    partitions = int(context.node_config["num-partitions"])
    return HospitalClient(partition, partitions).to_client()


app = ClientApp(client_fn=client_fn, mods=[secagg_mod])
