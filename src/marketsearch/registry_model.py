"""The registered model's code, logged as MLflow "models from code": ``register_bundle`` logs
this file (not a pickle of project objects) with the bundle as its artifact, so
``mlflow.pyfunc.load_model("models:/marketsearch/<version>")`` runs only this code, which
verifies the bundle's checksums before loading any of it.

In: a DataFrame with a ``text`` column (listing text); out: the predicted category per row.
"""
import mlflow
from mlflow.pyfunc import PythonModel


class MarketsearchModel(PythonModel):
    def load_context(self, context):
        from marketsearch.bundle import Bundle

        self.bundle = Bundle(context.artifacts["bundle"])
        self.bundle.verify()               # refuse a changed bundle before loading it

    def predict(self, context, model_input, params=None):  # noqa: ARG002
        preds = self.bundle.predict(model_input["text"].astype(str).tolist(), None,
                                    per_modality=False)
        return [self.bundle.labels[i] for i in preds.fused_probs.argmax(1)]


mlflow.models.set_model(MarketsearchModel())
