"""The pipeline: a DAG of stages (ingest, mine, train, evaluate, index, deploy) whose
finished stages are recorded, so a rerun skips them and a crashed run resumes."""
