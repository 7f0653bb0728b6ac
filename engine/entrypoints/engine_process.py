"""EngineProcess: the LLMEngine in a child process of its own, driven by AsyncLLM.

A server's event loop (HTTP, JSON, SSE) and the engine's steps would otherwise share one GIL, and
every output would wait for the other thread to let go of it. Here the child owns the model and
runs the EngineLoop; the server process keeps only the EngineFrontend (tokenizer, config, names),
so it tokenises prompts itself and sends the child token ids:

    server process                                engine process (spawned)
    AsyncLLM --("add" | "abort" | "stop", ...)--> pipe --> EngineLoop(LLMEngine)
    reader thread <--[messages of one iteration]-- pipe <--

Both ends are this program: what crosses the pipe is pickled by multiprocessing between a parent
and the child it spawned, never read from a file or a peer. The child ignores SIGINT (the server
decides when to stop) and exits when the pipe closes, so it never outlives the server; a child
that dies fails every request in flight and the server answers 503 from then on.
"""

from __future__ import annotations

import logging
import multiprocessing
import pickle
import signal
import threading

from ..core.frontend import EngineFrontend
from ..engine_args import EngineArgs

logger = logging.getLogger(__name__)

STOP_TIMEOUT_S = 30.0


class EngineProcess:
    """Start the engine process and wait for its model to load (ValueError / OSError as the
    engine would raise them in this process). Has the engine surface AsyncLLM and the server
    read (tokenize, tokenizer, config, served_model_names, get_stats) and AsyncLLM's run_loop."""

    def __init__(self, args: EngineArgs, log_level: int | str | None = None):
        self.frontend = EngineFrontend.load(args)
        self.tokenizer = self.frontend.tokenizer
        self.config = self.frontend.config
        self.served_model_names = self.frontend.served_model_names
        self.max_model_len = self.frontend.max_model_len
        context = multiprocessing.get_context("spawn")
        self._conn, child_conn = context.Pipe()
        level = logging.getLogger().getEffectiveLevel() if log_level is None else log_level
        self._process = context.Process(target=_engine_main, args=(args, child_conn, level),
                                        name="codeinfer-engine", daemon=True)
        self._process.start()
        child_conn.close()
        self._stopping = False
        self._reader: threading.Thread | None = None
        try:
            kind, payload = self._conn.recv()
        except EOFError:
            self._process.join()
            raise RuntimeError(f"the engine process exited while loading the model "
                               f"(exit code {self._process.exitcode})") from None
        if kind == "failed":
            self._process.join()
            raise payload
        self._stats = payload

    @property
    def pid(self) -> int:
        return self._process.pid

    def tokenize(self, prompt, sampling_params=None, release_gil: bool = False) -> dict:
        return self.frontend.tokenize(prompt, sampling_params, release_gil)

    def get_stats(self) -> dict:
        """The stats the engine reported when it was ready (AsyncLLM keeps them fresh after)."""
        return self._stats

    def run_loop(self, emit) -> None:
        """Hand the child's messages to `emit` from a reader thread, until the pipe closes; a
        close that `join` did not ask for reaches emit as ("died", message)."""
        self._reader = threading.Thread(target=self._read, args=(emit,),
                                        name="codeinfer-engine-reader", daemon=True)
        self._reader.start()

    def send(self, command: tuple) -> None:
        if command[0] == "stop":
            self._stopping = True
        try:
            self._conn.send(command)
        except (OSError, ValueError):  # the child is gone; the reader reports it
            pass

    def join(self, timeout: float = STOP_TIMEOUT_S) -> bool:
        """Wait for the child to exit (after a "stop"); terminate it past `timeout`."""
        self._stopping = True
        self._process.join(timeout)
        if self._process.is_alive():
            logger.error("the engine process did not stop within %.0f s; terminating it", timeout)
            self._process.terminate()
            self._process.join(5.0)
        if self._reader is not None:
            self._reader.join(5.0)
        self._conn.close()
        return not self._process.is_alive()

    def _read(self, emit) -> None:
        while True:
            try:
                messages = self._conn.recv()
            except (EOFError, OSError):
                break
            emit(messages)
        if not self._stopping:
            self._process.join(5.0)
            emit([("died", f"the engine process exited (exit code {self._process.exitcode}); "
                           f"restart the server")])


def _engine_main(args: EngineArgs, conn, log_level) -> None:
    """The child: load the engine, report ready (or the error), run the loop until "stop" or
    until the server's end of the pipe closes."""
    from ..core.llm_engine import LLMEngine
    from .async_engine import EngineLoop
    from .cli.serve import configure_logging

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    configure_logging(logging.getLevelName(log_level) if isinstance(log_level, int) else log_level)
    try:
        engine = LLMEngine.from_engine_args(args)
    except BaseException as error:
        conn.send(("failed", _portable(error)))
        return
    conn.send(("ready", dict(engine.get_stats())))

    def emit(messages: list[tuple]) -> None:
        try:
            conn.send([(kind, *map(_portable_arg, rest)) for kind, *rest in messages])
        except (OSError, ValueError):
            raise SystemExit(0) from None  # the server is gone

    def receive(block: bool) -> list[tuple]:
        commands = []
        try:
            if block:
                commands.append(conn.recv())
            while conn.poll(0):
                commands.append(conn.recv())
        except (EOFError, OSError):
            commands.append(("stop",))
        return commands

    EngineLoop(engine, emit).run(receive)


def _portable(error: BaseException) -> BaseException:
    """The error itself if it pickles (ValueError and the engine's own do), else a RuntimeError
    with its text: a request's error must reach its client, not break the pipe."""
    try:
        pickle.loads(pickle.dumps(error))
        return error
    except Exception:
        return RuntimeError(f"{type(error).__name__}: {error}")


def _portable_arg(arg):
    return _portable(arg) if isinstance(arg, BaseException) else arg
