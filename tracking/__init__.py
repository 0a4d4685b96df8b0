"""The MLflow side of bertflow, as plain library code (no Prefect):

- `store`: which tracking store, checking it answers, experiments, secret masking, code version;
- `registry`: registering versions, champion/challenger promotion under a lock, retraction, reading back;
- `packaging` + `model_code`: a fine-tuned model as an MLflow pyfunc logged from code (no pickle);
- `model_card`: the description of a registered version;
- `compare`, `plots`: versions side by side with bootstrap intervals; learning curves, confusion matrices;
- `lost_runs`, `leaderboard`: closing runs a lost attempt left open; the suite's leaderboard files and run.

The Prefect tasks in `tasks/` wrap these; `bert_core` knows nothing of them.
"""
