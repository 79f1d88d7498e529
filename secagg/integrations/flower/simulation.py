"""Flower's simulation engine with an in-process backend instead of Ray.

``flwr.simulation.run_simulation`` (flwr 1.42) always runs ClientApps on Ray actors. Ray installs
here (``flwr[simulation]`` pins ray 2.55.1) and works, but it takes ~18 s to start and its
``gcs_server`` and ``raylet`` listen on every interface, which secagg's tests may not do. This
module runs the *same* engine -- Flower's ``InMemoryLinkState``, its ``InMemoryGrid`` (the Grid the
ServerApp talks to, with message TTLs and ``send_and_receive`` timeouts), the Simulation Runtime's
worker loop (``vce.run_api``: queues, per-node ``Context`` store, an error reply when a ClientApp
raises) and ``flwr.server.run_serverapp.run`` -- and swaps only the ``Backend``: ClientApps run in
threads of this process, as a Ray actor would run them (``app(message=..., context=...)``, with
the message and context pickled across the boundary, as Ray does).

It imports Flower internals, so it is pinned to the Flower version it was tested with (1.42).
"""

from __future__ import annotations

import pickle
import threading
from collections.abc import Callable
from queue import Empty, Queue
from typing import cast

from flwr.app import Context, Message, RecordDict
from flwr.app.user_config import UserConfig
from flwr.clientapp import ClientApp
from flwr.common.constant import RUN_ID_NUM_BYTES, SUPERLINK_NODE_ID, TASK_ID_NUM_BYTES
from flwr.proto.task_pb2 import Task  # pylint: disable=E0611
from flwr.server.run_serverapp import run as run_serverapp
from flwr.server.superlink.fleet.vce import vce_api
from flwr.server.superlink.fleet.vce.backend.backend import Backend, BackendConfig
from flwr.server.superlink.fleet.vce.metrics import VceMetrics
from flwr.server.superlink.linkstate import InMemoryLinkState, LinkStateFactory
from flwr.server.superlink.linkstate.in_memory_linkstate import RunRecord
from flwr.server.superlink.linkstate.utils import generate_rand_int_from_bytes
from flwr.serverapp import ServerApp
from flwr.supercore.constant import FLWR_IN_MEMORY_DB_NAME, NOOP_FEDERATION_ID
from flwr.supercore.object_store import ObjectStoreFactory
from flwr.supercore.run import Run
from flwr.supercore.task_identity import TaskIdentity
from flwr.superlink.federation import NoOpFederationManager
from flwr.superlink.grid import InMemoryGrid

__all__ = ["ThreadBackend", "run_simulation_in_process"]


class ThreadBackend(Backend):
    """A Simulation Runtime backend that runs each ClientApp call in a worker thread."""

    def __init__(self, backend_config: BackendConfig | None = None, *, num_workers: int = 4):
        super().__init__(backend_config or {})
        self._num_workers = num_workers
        self._app_fn: Callable[[], ClientApp] | None = None

    def build(self, app_fn: Callable[[], ClientApp]) -> None:
        self._app_fn = app_fn

    @property
    def num_workers(self) -> int:
        return self._num_workers

    def is_worker_idle(self) -> bool:
        return True

    def terminate(self) -> None:
        self._app_fn = None

    def process_message(self, message: Message, context: Context) -> tuple[Message, Context]:
        if self._app_fn is None:
            raise RuntimeError("the backend was not built")
        # Ray pickles the message and context into the actor and the reply back out; do the same,
        # so no ClientApp shares objects with the server or another node (Flower's own SecAgg+
        # workflow sends one RecordDict to every node, and its mod mutates it).
        message, context = pickle.loads(pickle.dumps((message, context)))
        app = self._app_fn()
        reply = app(message=message, context=context)
        return cast(tuple[Message, Context], pickle.loads(pickle.dumps((reply, context))))


def run_simulation_in_process(
    server_app: ServerApp,
    client_app: ClientApp,
    num_supernodes: int,
    *,
    num_workers: int = 4,
    run_config: UserConfig | None = None,
    timeout: float = 600.0,
) -> Context:
    """Run a Flower app like ``run_simulation`` does, with ClientApps on threads of this process.

    Returns the ServerApp's final ``Context``. Raises whatever the ServerApp raised.
    """
    state_factory = LinkStateFactory(
        FLWR_IN_MEMORY_DB_NAME, NoOpFederationManager(), ObjectStoreFactory()
    )
    run = Run.create_empty(run_id=generate_rand_int_from_bytes(RUN_ID_NUM_BYTES))
    run.primary_task_id = generate_rand_int_from_bytes(TASK_ID_NUM_BYTES)
    run.federation_id = NOOP_FEDERATION_ID
    if run_config:
        run.override_config = dict(run_config)
    # As run_simulation does for its legacy Python API: a dummy identity for the server task.
    TaskIdentity.task_id = 1
    TaskIdentity.run_id = run.run_id
    TaskIdentity.node_id = SUPERLINK_NODE_ID
    state = cast(InMemoryLinkState, state_factory.state())
    state.run_ids[run.run_id] = RunRecord(run=run)
    state.task_store[run.primary_task_id] = Task(task_id=run.primary_task_id, run_id=run.run_id)

    grid = InMemoryGrid(state_factory=state_factory)
    grid.set_run(run)
    server_context = Context(
        run_id=run.run_id,
        node_id=0,
        node_config=UserConfig(),
        state=RecordDict(),
        run_config=UserConfig(run_config or {}),
    )
    f_stop = threading.Event()
    errors: Queue[BaseException] = Queue()
    contexts: Queue[Context] = Queue()

    def serve() -> None:
        try:
            contexts.put(
                run_serverapp(
                    grid=grid,
                    context=server_context,
                    server_app_dir="",
                    loaded_server_app=server_app,
                )
            )
        except BaseException as exc:  # re-raised in the calling thread below
            errors.put(exc)
        finally:
            f_stop.set()

    nodes = vce_api._register_nodes(num_nodes=num_supernodes, state_factory=state_factory)
    stores = vce_api._register_node_info_stores(nodes_mapping=nodes, run=run)
    server_thread = threading.Thread(target=serve, name="flower-serverapp", daemon=True)
    server_thread.start()
    watchdog = threading.Timer(timeout, f_stop.set)
    watchdog.daemon = True
    watchdog.start()
    try:
        vce_api.run_api(
            lambda: client_app,
            lambda: ThreadBackend(num_workers=num_workers),
            nodes,
            state_factory,
            stores,
            f_stop,
            VceMetrics(),
        )
    finally:
        watchdog.cancel()
        f_stop.set()
        server_thread.join(timeout=30)
    try:
        raise errors.get_nowait()
    except Empty:
        pass
    try:
        return contexts.get_nowait()
    except Empty as exc:
        raise TimeoutError(f"the simulation did not finish within {timeout} s") from exc
