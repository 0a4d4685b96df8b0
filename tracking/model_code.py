"""The file MLflow runs to build a logged bertflow model ("models from code"), so no pickle is written or read.

`tracking.packaging.log_model` logs this file as the model's code, with `bert_core` and `tracking` beside it
and the fine-tuned folder (safetensors weights, config.json, tokenizer.json) as the artifact `model_dir`.
`mlflow.pyfunc.load_model` executes this file, then `BertPyfunc.load_context` reads the weights through
`bert_core.predict.Predictor`.
"""

from mlflow.models import set_model

from tracking.packaging import BertPyfunc

set_model(BertPyfunc())
