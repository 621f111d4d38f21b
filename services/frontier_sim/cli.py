"""`graduate frontier-sim`: run the simulated frontier model (one uvicorn worker, async, so many
concurrent requests overlap their simulated latency)."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional

import typer

from services.common.settings import load_settings


def parse_latency_ms(value: str) -> tuple[float, float]:
    """'400-900' -> (400.0, 900.0); '500' -> (500.0, 500.0)."""
    low, sep, high = value.partition("-")
    try:
        bounds = (float(low), float(high if sep else low))
    except ValueError:
        raise typer.BadParameter(f"expected MIN-MAX in milliseconds, e.g. 400-900, got {value!r}") from None
    if bounds[0] < 0 or bounds[0] > bounds[1]:
        raise typer.BadParameter(f"expected 0 <= MIN <= MAX, got {value!r}")
    return bounds


def register(app: typer.Typer) -> None:
    @app.command("frontier-sim")
    def frontier_sim(
        host: Optional[str] = typer.Option(None, help="bind address [GRADUATE_SIM_HOST, 127.0.0.1]"),
        port: Optional[int] = typer.Option(None, help="port [GRADUATE_SIM_PORT, 8090]"),
        accuracy: Optional[float] = typer.Option(None, help="share of right labels [GRADUATE_SIM_ACCURACY, 0.92]"),
        latency_ms: Optional[str] = typer.Option(None, "--latency-ms", metavar="MIN-MAX",
                                                 help="latency range [GRADUATE_SIM_LATENCY_MIN_MS/MAX_MS, 400-900]"),
        latency_per_input: Optional[bool] = typer.Option(
            None, "--latency-per-input/--latency-in-arrival-order",
            help="each input's latency a function of the input and seed, not drawn in arrival order "
                 "[GRADUATE_SIM_LATENCY_PER_INPUT, false]"),
        seed: Optional[int] = typer.Option(None, help="which inputs err, and how [GRADUATE_SIM_SEED, 0]"),
        malformed_rate: Optional[float] = typer.Option(None, help="share of unparseable answers "
                                                                  "[GRADUATE_SIM_MALFORMED_RATE, 0.003]"),
        data_dir: Optional[Path] = typer.Option(None, help="train.csv/test.csv folder [GRADUATE_SIM_DATA_DIR]"),
        data: list[Path] = typer.Option([], "--data", help="a labelled CSV folder (text,category) of your own; "
                                        "pair each with --task, repeat for several tasks"),
        task: list[str] = typer.Option([], "--task", help="the classification task of config/tasks.yaml that the "
                                       "matching --data labels"),
        fault_500: Optional[float] = typer.Option(None, "--fault-500", help="share of requests answered 500"),
        fault_429: Optional[float] = typer.Option(None, "--fault-429", help="share answered 429 (Retry-After: 1)"),
        fault_timeout: Optional[float] = typer.Option(None, "--fault-timeout",
                                                      help="share that hang [GRADUATE_SIM_FAULT_TIMEOUT_S, 30 s]"),
        fault_garbage: Optional[float] = typer.Option(None, "--fault-garbage",
                                                      help="share answered 200 with a non-JSON body"),
        log_level: str = typer.Option("info", help="uvicorn log level"),
    ) -> None:
        """Serve a SIMULATED frontier model (OpenAI-compatible) for demos and tests; never a real LLM."""
        import uvicorn

        from services.frontier_sim.app import create_app
        from services.frontier_sim.settings import SimSettings

        overrides = {"host": host, "port": port, "accuracy": accuracy, "seed": seed, "malformed_rate": malformed_rate,
                     "data_dir": data_dir, "latency_per_input": latency_per_input, "fault_rate_500": fault_500,
                     "fault_rate_429": fault_429, "fault_rate_timeout": fault_timeout,
                     "fault_rate_garbage": fault_garbage}
        if len(data) != len(task):
            raise typer.BadParameter(f"{len(data)} --data and {len(task)} --task: give one task per data folder")
        if data:
            overrides["more_data"] = dict(zip(task, data))
        if latency_ms is not None:
            overrides["latency_min_ms"], overrides["latency_max_ms"] = parse_latency_ms(latency_ms)
        settings = load_settings(SimSettings, **{k: v for k, v in overrides.items() if v is not None})
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        try:
            server_app = create_app(settings)
        except (ValueError, KeyError, FileNotFoundError) as exc:
            raise SystemExit(f"frontier-sim: {exc}") from None
        uvicorn.run(server_app, host=settings.host, port=settings.port, workers=1, log_level=log_level,
                    timeout_graceful_shutdown=2)
