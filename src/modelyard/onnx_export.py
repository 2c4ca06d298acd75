"""Export a fitted model to ONNX at publish time, and keep it only if it predicts what scikit-learn does.

The model server answers faster with ONNX Runtime than with scikit-learn (no Python per tree, no pandas
in the hot path), but a converted graph is a second implementation of the model: skl2onnx may not know
an estimator, may compute in float32, or may differ on edge cases. So :func:`export_onnx` converts the
fitted Pipeline, runs the graph on every holdout row through the very runtime the server uses
(:class:`modelyard.serving.runtime.OnnxRuntime`), and keeps ``model.onnx`` only if every probability is
within ``tolerance`` (1e-5) of scikit-learn's on the same rows. Otherwise, or when conversion is not
possible, the bundle records why in ``metadata.onnx.skipped`` and the server uses scikit-learn.

What converts. modelyard's preprocessing (``modelyard.training.preprocessing``) normalises its inputs
with ``FunctionTransformer(pandas method)`` steps, which skl2onnx cannot translate. The server's codec
already delivers what those steps produce (numeric columns as float64, categorical columns as ``str``),
so they convert to identities here. Missing values: numeric NaN stays NaN and is imputed in the graph; a
missing category cannot be a string tensor element, so the runtime sends ``MISSING_CATEGORY`` in its
place and the graph imputes it. Text features (TF-IDF) are never exported: ONNX tokenisation does not
reproduce scikit-learn's regular expression and n-grams exactly.

Inputs. A numeric-only model gets one ``[N, n_features]`` double input, ``features`` (the shape a V2
tensor request has, and one array to feed); other models get one ``[N, 1]`` input per feature column,
named after it.
"""

from __future__ import annotations

import functools
import logging
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from typing import Any

import numpy as np
import pandas as pd

from modelyard.bundle import OnnxInfo, OnnxInput
from modelyard.spec import FeatureSpec, FeatureType

log = logging.getLogger(__name__)

ONNX_FILE = "model.onnx"
PARITY_TOLERANCE = 1e-5
MISSING_CATEGORY = "\x00modelyard:missing"
"""Stands for a missing categorical value in a string tensor (None cannot be a tensor element)."""
NUMERIC_INPUT = "features"
TARGET_OPSET = {"": 19, "ai.onnx.ml": 3}
"""Opset 19 for string Equal; runs on onnxruntime >= 1.15."""
PROBABILITIES_OUTPUT = "probabilities"

_PREPROCESS_STEP = "preprocess"
_MODEL_STEP = "model"


class NotConvertible(Exception):
    """The model cannot be exported; the message says why, for ``metadata.onnx.skipped``."""


@dataclass(frozen=True)
class OnnxExport:
    """The outcome: ``content`` (the model.onnx bytes) only for a verified export."""

    info: OnnxInfo
    content: bytes | None = None

    @property
    def extra_files(self) -> dict[str, bytes]:
        """What to pass to ``write_bundle(extra_files=...)``."""
        return {ONNX_FILE: self.content} if self.content is not None and self.info.file else {}


def _skipped(reason: str) -> OnnxExport:
    log.info("no ONNX model for this bundle: %s", reason)
    return OnnxExport(info=OnnxInfo(skipped=reason))


def _versions() -> dict[str, str]:
    found = {}
    for distribution in ("skl2onnx", "onnx", "onnxruntime"):
        try:
            found[distribution] = version(distribution)
        except PackageNotFoundError:
            found[distribution] = "not installed"
    return found


def export_onnx(
    model: Any,
    features: Sequence[FeatureSpec],
    classes: Sequence[str | int],
    holdout: pd.DataFrame,
    *,
    tolerance: float = PARITY_TOLERANCE,
) -> OnnxExport:
    """Convert ``model`` (a fitted Pipeline: preprocess, model) and verify it on the ``holdout`` rows.

    Never raises: ONNX is an optional speed-up, so a model it cannot export (or a bug here) gives an
    ``info.skipped`` saying why, and publishing goes on. ``holdout`` needs the feature columns (others,
    such as the target, are ignored); rows are compared as the server would see them.
    """
    try:
        return _export(model, features, classes, holdout, tolerance)
    except Exception as exc:
        log.exception("ONNX export failed unexpectedly")
        return _skipped(f"the ONNX export failed: {type(exc).__name__}: {_first_line(exc)}")


def _export(
    model: Any,
    features: Sequence[FeatureSpec],
    classes: Sequence[str | int],
    holdout: pd.DataFrame,
    tolerance: float,
) -> OnnxExport:
    if holdout.empty:
        return _skipped("no holdout rows to verify an ONNX export against")
    missing = [f.name for f in features if f.name not in holdout.columns]
    if missing:
        return _skipped(f"the holdout lacks feature column(s) {', '.join(missing)}")
    try:
        graph, inputs = convert(model, features)
    except NotConvertible as exc:
        return _skipped(str(exc))
    except Exception as exc:  # a converter bug or an estimator skl2onnx does not know
        return _skipped(f"skl2onnx could not convert the model: {type(exc).__name__}: {_first_line(exc)}")
    content = graph.SerializeToString()
    opset = {entry.domain or "ai.onnx": int(entry.version) for entry in graph.opset_import}
    model_classes, bundle_classes = _plain_labels(model.classes_), _plain_labels(classes)
    if sorted(map(repr, model_classes)) != sorted(map(repr, bundle_classes)):
        return _skipped(f"the model predicts classes {model_classes}, the bundle lists {bundle_classes}")
    candidate = OnnxInfo(
        file=ONNX_FILE,
        max_abs_diff=0.0,  # replaced below, once measured
        rows_checked=len(holdout),
        tolerance=tolerance,
        opset=opset,
        inputs=inputs,
        probabilities=PROBABILITIES_OUTPUT,
        classes=model_classes,
        missing_category=MISSING_CATEGORY,
        converter_versions=_versions(),
    )
    try:
        max_diff = _parity(model, content, candidate, features, holdout)
    except Exception as exc:
        return _skipped(
            f"onnxruntime could not run the converted model: {type(exc).__name__}: {_first_line(exc)}"
        )
    if not np.isfinite(max_diff) or max_diff > tolerance:
        difference = f"by up to {max_diff:.3g}" if np.isfinite(max_diff) else "(NaN or a shape mismatch)"
        return OnnxExport(
            info=OnnxInfo(
                skipped=(
                    f"ONNX probabilities differ from scikit-learn's {difference} on the "
                    f"{len(holdout)} holdout rows (tolerance {tolerance:g})"
                ),
                max_abs_diff=float(max_diff) if np.isfinite(max_diff) else None,
                rows_checked=len(holdout),
                tolerance=tolerance,
                opset=opset,
                converter_versions=_versions(),
            )
        )
    info = candidate.model_copy(update={"max_abs_diff": float(max_diff)})
    log.info("kept model.onnx: max |onnx - sklearn| %.3g over %d holdout rows", max_diff, len(holdout))
    return OnnxExport(info=OnnxInfo.model_validate(info.model_dump()), content=content)


def _plain_labels(labels: Any) -> list[Any]:
    """Class labels as Python values (numpy scalars unwrapped), as metadata.json stores them."""
    return [label.item() if hasattr(label, "item") else label for label in list(labels)]


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return (text.splitlines() or [""])[0][:300]


def _parity(
    model: Any, content: bytes, info: OnnxInfo, features: Sequence[FeatureSpec], holdout: pd.DataFrame
) -> float:
    """Largest |onnx - sklearn| over the holdout, both fed the frame the server's codec would build."""
    from modelyard.serving.runtime import OnnxRuntime, served_frame

    frame = served_frame(holdout, features)
    runtime = OnnxRuntime(content, info, list(info.classes), feature_names=[f.name for f in features])
    onnx_proba = runtime.predict_proba(frame)
    sklearn_proba = np.asarray(model.predict_proba(frame), dtype=np.float64)
    if onnx_proba.shape != sklearn_proba.shape:
        return float("inf")
    return float(np.max(np.abs(onnx_proba - sklearn_proba)))


# ------------------------------------------------------------------ conversion


def convert(model: Any, features: Sequence[FeatureSpec]) -> tuple[Any, list[OnnxInput]]:
    """The ONNX graph (an onnx.ModelProto) of a fitted Pipeline, and its input signature.

    NotConvertible names the reason when the model is outside what this exports.
    """
    try:
        import skl2onnx  # noqa: F401
    except ImportError:
        raise NotConvertible("skl2onnx is not installed (pip install 'modelyard[onnx]')") from None
    from sklearn.compose import ColumnTransformer
    from sklearn.pipeline import Pipeline

    text = [f.name for f in features if f.type is FeatureType.TEXT]
    if text:
        raise NotConvertible(
            f"text feature(s) {', '.join(text)}: TF-IDF is not exported, ONNX tokenisation differs "
            "from scikit-learn's"
        )
    if not isinstance(model, Pipeline) or [name for name, _ in model.steps] != [
        _PREPROCESS_STEP,
        _MODEL_STEP,
    ]:
        raise NotConvertible(
            f"expected a Pipeline of ({_PREPROCESS_STEP!r}, {_MODEL_STEP!r}), got {type(model).__name__}"
        )
    preprocess = model.named_steps[_PREPROCESS_STEP]
    estimator = model.named_steps[_MODEL_STEP]
    if not isinstance(preprocess, ColumnTransformer):
        raise NotConvertible(f"the preprocess step is a {type(preprocess).__name__}, not a ColumnTransformer")
    _check_identity_steps(model)

    numeric_only = all(f.type is FeatureType.NUMERIC for f in features)
    if numeric_only:
        # The ColumnTransformer then holds one numeric branch over every column in order: converting
        # (branch, estimator) with one [N, k] input is equivalent and feeds one array instead of k.
        branch = _sole_numeric_branch(preprocess, [f.name for f in features])
        target = Pipeline([("numeric", branch), (_MODEL_STEP, estimator)])
        inputs = [OnnxInput(name=NUMERIC_INPUT, columns=[f.name for f in features], type="double")]
    else:
        target = model
        inputs = [
            OnnxInput(
                name=f.name, columns=[f.name], type="double" if f.type is FeatureType.NUMERIC else "string"
            )
            for f in features
        ]
    graph = _convert(target, estimator, inputs)
    return graph, _named_as_in_graph(graph, inputs)


def _check_identity_steps(model: Any) -> None:
    """Every FunctionTransformer must be one of preprocessing's normalisers, which convert to identities."""
    from sklearn.preprocessing import FunctionTransformer

    def visit(estimator: Any) -> None:
        if isinstance(estimator, FunctionTransformer):
            if not _is_normaliser(estimator):
                name = getattr(estimator.func, "__qualname__", repr(estimator.func))
                raise NotConvertible(f"FunctionTransformer({name}) has no ONNX equivalent")
            return
        for _, child in getattr(estimator, "steps", []):
            visit(child)
        for _, child, _ in getattr(estimator, "transformers_", []):
            if not isinstance(child, str):
                visit(child)

    visit(model)


_NORMALISERS: dict[Callable[..., Any], Callable[[dict[str, Any]], bool]] = {
    # numeric: to float64, None -> NaN. The codec already sends float64 with NaN.
    pd.DataFrame.to_numpy: lambda kw: kw.get("dtype") in (float, object, np.float64),
    # categorical: values as str. The codec already sends str.
    pd.DataFrame.map: lambda kw: kw.get("func") is str and kw.get("na_action") == "ignore",
}


def _is_normaliser(transformer: Any) -> bool:
    accepts = _NORMALISERS.get(transformer.func)
    return (
        accepts is not None
        and transformer.inverse_func is None
        and not transformer.validate
        and accepts(dict(transformer.kw_args or {}))
    )


def _sole_numeric_branch(preprocess: Any, names: list[str]) -> Any:
    branches = [(name, step, columns) for name, step, columns in preprocess.transformers_ if step != "drop"]
    if len(branches) != 1 or list(branches[0][2]) != names or isinstance(branches[0][1], str):
        raise NotConvertible(
            "the preprocess step does not have one branch over every numeric feature in order"
        )
    return branches[0][1]


@functools.cache
def _custom_converters() -> tuple[dict[type, Callable[..., None]], dict[type, Callable[..., None]]]:
    """Shape calculators and converters that replace or complement skl2onnx's own."""
    from onnx import TensorProto
    from skl2onnx.common.data_types import DoubleTensorType, FloatTensorType, StringTensorType
    from skl2onnx.operator_converters.random_forest import convert_sklearn_random_forest_classifier
    from skl2onnx.shape_calculators.linear_classifier import calculate_linear_classifier_output_shapes
    from sklearn.ensemble import HistGradientBoostingClassifier, RandomForestClassifier
    from sklearn.impute import SimpleImputer
    from sklearn.preprocessing import FunctionTransformer

    def same_shape(operator: Any) -> None:
        source = operator.inputs[0]
        operator.outputs[0].type = type(source.type)(
            [source.get_first_dimension(), source.get_second_dimension()]
        )

    def identity(scope: Any, operator: Any, container: Any) -> None:
        container.add_node(
            "Identity",
            operator.inputs[0].full_name,
            operator.outputs[0].full_name,
            name=scope.get_unique_operator_name("Normalised"),
        )

    def impute(scope: Any, operator: Any, container: Any) -> None:
        # Where(missing, statistics_, x), per column. ONNX's ai.onnx.ml Imputer has no double kernel
        # in onnxruntime and skl2onnx's string path needs a string missing_values.
        imputer = operator.raw_operator
        if len(operator.inputs) != 1:
            raise NotConvertible("SimpleImputer with several inputs")
        if not (isinstance(imputer.missing_values, float) and np.isnan(imputer.missing_values)):
            raise NotConvertible(f"SimpleImputer(missing_values={imputer.missing_values!r})")
        if getattr(imputer, "add_indicator", False):
            raise NotConvertible("SimpleImputer(add_indicator=True)")
        source = operator.inputs[0]
        statistics = np.asarray(imputer.statistics_)
        if isinstance(source.type, StringTensorType):
            marker = scope.get_unique_variable_name("missing_category")
            container.add_initializer(marker, TensorProto.STRING, [1], [MISSING_CATEGORY.encode()])
            mask = scope.get_unique_variable_name("is_missing")
            container.add_node(
                "Equal", [source.full_name, marker], [mask], name=scope.get_unique_operator_name("Equal")
            )
            fill = scope.get_unique_variable_name("fill")
            container.add_initializer(
                fill, TensorProto.STRING, [1, statistics.size], [str(v).encode() for v in statistics]
            )
        elif isinstance(source.type, DoubleTensorType):
            if np.isnan(statistics.astype(np.float64)).any():
                # scikit-learn drops columns it could not impute; that changes the width
                raise NotConvertible("SimpleImputer with a column that was entirely missing in training")
            mask = scope.get_unique_variable_name("is_nan")
            container.add_node(
                "IsNaN", [source.full_name], [mask], name=scope.get_unique_operator_name("IsNaN")
            )
            fill = scope.get_unique_variable_name("fill")
            container.add_initializer(
                fill, TensorProto.DOUBLE, [1, statistics.size], statistics.astype(float).tolist()
            )
        else:
            raise NotConvertible(f"SimpleImputer on {type(source.type).__name__}")
        container.add_node(
            "Where",
            [mask, fill, source.full_name],
            [operator.outputs[0].full_name],
            name=scope.get_unique_operator_name("Impute"),
        )

    def float_tree_outputs(operator: Any) -> None:
        calculate_linear_classifier_output_shapes(operator)
        probabilities = operator.outputs[1]
        probabilities.type = FloatTensorType(probabilities.type.shape)

    def float_tree(scope: Any, operator: Any, container: Any) -> None:
        # scikit-learn's forests compare float32 inputs with their thresholds; skl2onnx's double path
        # compares doubles (so values near a threshold take the other branch) and, for
        # HistGradientBoosting, computes wrong scores. Cast first, as scikit-learn does for forests;
        # the parity check catches the rare HistGradientBoosting input that rounds across a threshold.
        source = operator.inputs[0]
        if isinstance(source.type, DoubleTensorType):
            as_float = scope.declare_local_variable("as_float", FloatTensorType(source.type.shape))
            container.add_node(
                "Cast",
                [source.full_name],
                [as_float.full_name],
                to=TensorProto.FLOAT,
                name=scope.get_unique_operator_name("AsFloat"),
            )
            operator.inputs.set_element(0, as_float)
            try:
                convert_sklearn_random_forest_classifier(scope, operator, container)
            finally:
                operator.inputs.set_element(0, source)
        else:
            convert_sklearn_random_forest_classifier(scope, operator, container)

    shapes: dict[type, Callable[..., None]] = {
        FunctionTransformer: same_shape,
        SimpleImputer: same_shape,
        HistGradientBoostingClassifier: float_tree_outputs,
        RandomForestClassifier: float_tree_outputs,
    }
    converters: dict[type, Callable[..., None]] = {
        FunctionTransformer: identity,
        SimpleImputer: impute,
        HistGradientBoostingClassifier: float_tree,
        RandomForestClassifier: float_tree,
    }
    return shapes, converters


def _convert(target: Any, estimator: Any, inputs: list[OnnxInput]) -> Any:
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import DoubleTensorType, StringTensorType

    initial_types = [
        (i.name, (DoubleTensorType if i.type == "double" else StringTensorType)([None, len(i.columns)]))
        for i in inputs
    ]
    shapes, converters = _custom_converters()
    with warnings.catch_warnings():
        # skl2onnx reads attributes scikit-learn deprecates and passes booleans as ints to onnx: noise
        # in a training log, not something the user can act on
        warnings.simplefilter("ignore", category=DeprecationWarning)
        warnings.simplefilter("ignore", category=FutureWarning)
        graph = convert_sklearn(
            target,
            initial_types=initial_types,
            options={id(estimator): {"zipmap": False}},  # probabilities as one [N, n_classes] tensor
            target_opset=dict(TARGET_OPSET),
            custom_shape_calculators=shapes,
            custom_conversion_functions=converters,
        )
    outputs = [output.name for output in graph.graph.output]
    if PROBABILITIES_OUTPUT not in outputs:
        raise NotConvertible(f"the converted graph has no {PROBABILITIES_OUTPUT!r} output (it has {outputs})")
    return graph


def _named_as_in_graph(graph: Any, inputs: list[OnnxInput]) -> list[OnnxInput]:
    """``inputs`` with the names skl2onnx gave them (it replaces characters such as spaces)."""
    found = [i.name for i in graph.graph.input]
    if len(found) != len(inputs):
        raise NotConvertible(f"the converted graph has {len(found)} inputs, expected {len(inputs)}")
    return [spec.model_copy(update={"name": name}) for spec, name in zip(inputs, found, strict=True)]


__all__ = [
    "MISSING_CATEGORY",
    "ONNX_FILE",
    "PARITY_TOLERANCE",
    "NotConvertible",
    "OnnxExport",
    "convert",
    "export_onnx",
]
