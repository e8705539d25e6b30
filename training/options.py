"""Every option of a training job, defined once.

``embedsvc train``'s options, the pipeline's ``train`` stage table, the arguments handed to
each torchrun rank (``training.train``) and the model card's record of the run all come from
these models (see :mod:`embedsvc.options`), so a default lives in one place.

- :class:`TrainOptions`: the recipe every rank needs (and the run folder's fingerprint);
- :class:`LaunchSpec`: how many processes, where they meet;
- :class:`TrainJob`: the whole job, the two above included: what to train on, the name to
  register, evaluation and mining.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

Strategy = Literal["ddp", "fsdp", "ps"]
Device = Literal["auto", "cpu", "cuda"]

_STRICT_KEYS = ConfigDict(extra="forbid", frozen=True)


class TrainOptions(BaseModel):
    """The training recipe, passed to every rank.

    The defaults are the recipe measured in ``benchmarks/finetune.py`` (SciFact, 2 ranks).
    """

    model_config = _STRICT_KEYS

    strategy: Strategy = Field(
        "ddp", description="ddp: replicas under torchrun; fsdp: sharded replicas (FSDP2, CPU or GPU); "
                           "ps: a parameter server and asynchronous workers on Ray.")
    epochs: float = Field(3.0, gt=0, description="Passes over the pairs.")
    max_steps: int = Field(-1, description="Stop after this many steps (overrides --epochs when > 0).")
    batch_size: int = Field(32, ge=1, description="Global batch, split evenly over the ranks.")
    lr: float = Field(3e-5, gt=0, description="Peak learning rate.")
    warmup: float = Field(0.1, ge=0, description="Warm-up: a fraction (< 1) or a number of steps.")
    weight_decay: float = Field(0.01, ge=0, description="AdamW weight decay.")
    scale: float = Field(20.0, gt=0, description="MultipleNegativesRankingLoss scale (1 / temperature).")
    max_seq_length: int = Field(256, ge=8, description="Tokens per text; longer texts are cut.")
    seed: int = Field(42, description="Seed of the shuffling and the initialisation.")
    save_steps: int = Field(100, ge=1, description="Checkpoint every N steps.")
    save_total_limit: int = Field(2, ge=1, description="Checkpoints kept on disk.")
    logging_steps: int = Field(10, ge=1, description="Log the loss every N steps.")
    bf16: bool = Field(False, description="bf16 mixed precision (GPU).")
    workers: int = Field(2, ge=1, description="Worker actors of --strategy ps.")
    staleness: int = Field(1, ge=0, description="--strategy ps: most steps a gradient's weights may "
                                                "be behind the server's; a staler push is recomputed.")
    ray_address: str | None = Field(None, description="--strategy ps and --federated: the Ray cluster to join "
                                                      "(default: a local Ray).")
    gather: bool = Field(True, description="Gather in-batch negatives from every rank, as one process "
                                           "with the global batch would see them.")
    federated: bool = Field(False, description="Federated fine-tuning (Flower, FedAvg): each client trains "
                                               "on its own pairs, only weights travel to the server.")
    clients: int | None = Field(None, ge=1, description="--federated: clients (default: 5, or one per "
                                                        "folder with --partition folders).")
    rounds: int = Field(3, ge=1, description="--federated: rounds of local training and averaging.")
    local_steps: int = Field(10, ge=1, description="--federated: optimizer steps each client takes per round.")
    partition: str = Field("iid", description="--federated: how DATA's pairs become clients: iid, by-query, "
                                              "dirichlet:ALPHA (topic skew; smaller is more skewed), or "
                                              "folders (DATA holds one BEIR folder or JSONL file per client).")

    @field_validator("partition")
    @classmethod
    def _known_partition(cls, value: str) -> str:
        from training.partition import parse_partition

        parse_partition(value)
        return value


class LaunchSpec(BaseModel):
    """How many processes torchrun starts, and where they meet."""

    model_config = _STRICT_KEYS

    nproc: int = Field(1, ge=1, description="Processes on this node (one per GPU, or per core on CPU).")
    nnodes: int = Field(1, ge=1, description="Machines taking part; each runs the same command.")
    rdzv_endpoint: str | None = Field(None, description="host:port of the rendezvous (needed when --nnodes > 1).")
    rdzv_id: str = Field("embedsvc-train", description="Job id shared by the nodes of one job.")
    device: Device = Field("auto", description="auto (CUDA when visible), cpu or cuda.")


class TrainJob(BaseModel):
    """Everything ``embedsvc train`` (or a pipeline's ``train`` stage) asks for."""

    model_config = _STRICT_KEYS

    data: Path = Field(description="BEIR folder (its --split qrels) or a JSONL file of pairs.",
                       json_schema_extra={"argument": True})
    name: str = Field("finetuned", description="Registry name of the trained model.")
    base_model: str | None = Field(None, description="Model to start from (default: EMBEDSVC_DEFAULT_MODEL).")
    split: str = Field("train", description="Qrels split to train on, for a BEIR folder.")
    eval_data: Path | None = Field(None, description="BEIR folder to evaluate on (default: DATA, when it has "
                                                     "the --eval-split qrels).")
    eval_split: str = Field("test", description="Qrels split to evaluate on.")
    evaluate: bool = Field(True, description="Evaluate the trained model and the base after training.",
                           json_schema_extra={"flags": ["--eval/--no-eval"]})
    mine_negatives: int = Field(0, ge=0, description="Hard negatives mined per pair with the base model.")
    mine_skip_top: int = Field(0, ge=0, description="Top ranks skipped when mining.")
    mine_corpus: Path | None = Field(None, description="BEIR folder searched for negatives (default: DATA).")
    run_dir: Path | None = Field(None, description="Run folder (default: fingerprinted under the home folder).")
    restart: bool = Field(False, description="Ignore the checkpoints of an earlier attempt.")
    options: TrainOptions = Field(default_factory=TrainOptions)
    launch: LaunchSpec = Field(default_factory=LaunchSpec)

    def eval_folder(self) -> Path | None:
        """The BEIR folder evaluated after training: --eval-data, else DATA when it has the
        eval split's qrels; None when evaluation is off or there is nothing to score."""
        if not self.evaluate:
            return None
        if self.eval_data is not None:
            return self.eval_data
        has_qrels = (self.data / "qrels" / f"{self.eval_split}.tsv").is_file()
        return self.data if has_qrels else None
