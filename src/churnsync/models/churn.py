"""The machine-learned churn model: LightGBM and a logistic-regression challenger on stacked cut dates, with
BG/NBD as the third candidate; the champion is chosen by a time split.

Protocol (../shared/spec/models.md, "no leakage"):

- Training cuts ``c_k = scoring_cut − L − k·S`` (``k = 0 .. K−1``; ``L`` the label window, ``S`` the spacing).
  Features at ``c_k`` use events strictly before ``c_k``; the label is "no qualifying event in
  ``[c_k, c_k + L)``", so every label window ends on or before the scoring cut (:func:`label_churn` refuses one
  that crosses it).
- Validation (champion choice, reported figures): candidates trained on ``c_2 .. c_{K−1}``, calibrated on
  ``c_1``, measured on ``c_0``, the most recent fully labelled window. Candidates are compared by validation
  log-loss (a proper score: it rewards ranking and calibration together); the champion is the simplest one within
  one standard error of the lowest (:func:`choose_champion`), so that a lead within the noise of one window does
  not buy a more complex model; the reason is recorded.
- Final model: trained on ``c_1 .. c_{K−1}``, calibrated on ``c_0`` (Platt scaling on the logit of the raw
  score). A logistic calibration with an intercept reproduces the observed churn rate of ``c_0`` exactly:
  the level is anchored to the most recent fully labelled window. When the label window is shorter than
  the horizon (``L < N``: too little history for N-day labels, as on CDNOW's 39-week split), the level is
  instead anchored to the BG/NBD aggregate forecast at the scoring cut: one logit shift makes the mean
  churn probability equal to the mean BG/NBD P(no purchase in N days).

Features: :mod:`churnsync.features.windows` plus the BTYD outputs of a BG/NBD fit at the same cut
(``btyd_p_no_purchase``, ``btyd_p_alive``, ``btyd_expected_purchases``, over the label window).
``churn_driver`` is the feature with the largest positive LightGBM contribution (``pred_contrib=True``).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import duckdb
import numpy as np

from churnsync.errors import DataError, ModelError, NotFittedError
from churnsync.features.rfm import RFMFrame, build_rfm
from churnsync.features.windows import (
    DEFAULT_WINDOWS,
    FeatureFrame,
    build_window_features,
    discover_event_types,
    feature_label,
)
from churnsync.models.bgnbd import BetaGeoModel
from churnsync.models.evaluation import calibration_curve, churn_metrics, gains_by_decile

__all__ = [
    "CANDIDATES",
    "SIMPLICITY",
    "ChurnModel",
    "ChurnScores",
    "CutFrame",
    "assemble_cut_frame",
    "build_cut_frame",
    "choose_champion",
    "label_churn",
]

CANDIDATES = ("gbm", "logistic", "bgnbd")
BTYD_UNIT_DAYS = 7.0
BTYD_FEATURES = ("btyd_p_no_purchase", "btyd_p_alive", "btyd_expected_purchases")
_EPS = 1e-6
_DRIVER_BLOCK = 100_000
# Marketer words for the features that are not already self-explanatory.
_DRIVER_WORDS = {
    "btyd_p_no_purchase": "predicted_inactivity",
    "btyd_p_alive": "likely_lapsed",
    "btyd_expected_purchases": "low_expected_purchases",
    "overdue_ratio": "overdue_for_next_purchase",
}


def _naive_utc(moment: datetime) -> datetime:
    return moment if moment.tzinfo is None else moment.astimezone(UTC).replace(tzinfo=None)


def label_churn(
    con: duckdb.DuckDBPyConnection,
    customer_id: np.ndarray,
    cut: datetime,
    label_days: int,
    qualifying_events: Sequence[str],
    *,
    scoring_cut: datetime,
) -> np.ndarray:
    """1.0 for every customer of ``customer_id`` with no qualifying event in ``[cut, cut + label_days)``, else 0.0.

    Raises :class:`ModelError` when the label window ends after ``scoring_cut``: its outcome is not
    observable at scoring time, and using it would leak the future into training.
    """
    start = _naive_utc(cut)
    end = start + timedelta(days=int(label_days))
    if end > _naive_utc(scoring_cut):
        raise ModelError(
            f"churn labels: the window [{start:%Y-%m-%d}, {end:%Y-%m-%d}) crosses the scoring cut "
            f"{_naive_utc(scoring_cut):%Y-%m-%d}",
            remedy="Use training cuts at least label_days before the scoring cut",
        )
    quals = sorted({q.lower() for q in qualifying_events})
    marks = ", ".join("?" for _ in quals)
    # Same population and order as the features: customers with a qualifying event before the cut.
    table = con.sql(
        f"SELECT customer_id, count_if(occurred_at >= ?) = 0 AS churned FROM events "
        f"WHERE occurred_at < ? AND lower(event_type) IN ({marks}) AND customer_id IS NOT NULL "
        f"GROUP BY customer_id HAVING min(occurred_at) < ? ORDER BY customer_id",
        params=[start, end, *quals, start],
    ).to_arrow_table()
    ids = np.asarray(table.column("customer_id").to_numpy(zero_copy_only=False), dtype=object)
    if ids.shape != customer_id.shape or not np.array_equal(ids, customer_id):
        raise ModelError("churn labels: the customers differ from those of the features", remedy="Report this")
    return np.asarray(table.column("churned").to_numpy(zero_copy_only=False), dtype=np.float64)


@dataclass
class CutFrame:
    """Features (window features + BTYD outputs) of every customer at one cut, and the BG/NBD fitted there."""

    customer_id: np.ndarray
    names: tuple[str, ...]
    X: np.ndarray
    rfm: RFMFrame
    btyd: BetaGeoModel
    labels: np.ndarray | None = None


def build_cut_frame(
    con: duckdb.DuckDBPyConnection,
    cut: datetime,
    qualifying_events: Sequence[str],
    *,
    event_types: Sequence[str],
    label_days: int,
    windows: Sequence[int] = DEFAULT_WINDOWS,
) -> CutFrame:
    """Window features at ``cut`` joined with the outputs of a BG/NBD fitted on the RFM at ``cut``."""
    feats = build_window_features(con, cut, qualifying_events, event_types=event_types, windows=windows)
    rfm = build_rfm(con, cut, qualifying_events, time_unit_days=BTYD_UNIT_DAYS)
    if len(rfm) == 0:
        raise DataError(
            f"churn features: no customer has a qualifying event before {cut:%Y-%m-%d}",
            remedy="Check prediction.qualifying_events and the history available before the cut",
        )
    if len(rfm) != len(feats) or not np.array_equal(rfm.customer_id, feats.customer_id):
        raise ModelError("churn features: RFM and window features disagree on the customers", remedy="Report this")
    btyd = BetaGeoModel(time_unit_days=BTYD_UNIT_DAYS).fit(rfm.frequency, rfm.recency, rfm.T)
    return assemble_cut_frame(feats, rfm, btyd, label_days=label_days)


def assemble_cut_frame(feats: FeatureFrame, rfm: RFMFrame, btyd: BetaGeoModel, *, label_days: int) -> CutFrame:
    """The :class:`CutFrame` of aligned window features and RFM rows, with the outputs of an already fitted
    BG/NBD ``btyd`` (the Spark engine fits it once on the whole base and scores partition by partition)."""
    t = label_days / BTYD_UNIT_DAYS
    extra = np.column_stack(
        [
            btyd.prob_no_purchase(t, rfm.frequency, rfm.recency, rfm.T),
            btyd.p_alive(rfm.frequency, rfm.recency, rfm.T),
            btyd.expected_purchases(t, rfm.frequency, rfm.recency, rfm.T),
        ]
    )
    return CutFrame(
        customer_id=feats.customer_id,
        names=(*feats.names, *BTYD_FEATURES),
        X=np.hstack([feats.values, extra]),
        rfm=rfm,
        btyd=btyd,
    )


# Candidates from the simplest to the most complex, by the number of parameters fitted to the churn labels: BG/NBD's
# score is fixed by the purchase model and only its Platt calibration (2) learns from labels; the logistic
# challenger fits 5 more; the GBM hundreds of leaves. Fixed a priori (not chosen on any data).
SIMPLICITY = ("bgnbd", "logistic", "gbm")


def choose_champion(y: np.ndarray, predictions: dict[str, np.ndarray]) -> tuple[str, dict[str, dict[str, float]]]:
    """The one-standard-error rule (Breiman et al. 1984) on per-customer validation log-loss.

    The best candidate has the lowest mean log-loss; every other candidate's ``gap`` to it has a standard error
    ``se`` = std of the paired per-customer differences / √n. The champion is the simplest candidate (order
    :data:`SIMPLICITY`) whose gap is at most one standard error: a lead within the noise of the validation window
    does not justify a more complex model. Returns the champion and, per candidate, ``log_loss``, ``gap``, ``se``.
    """
    yy = np.asarray(y, dtype=np.float64)
    losses: dict[str, np.ndarray] = {}
    for name, p in predictions.items():
        q = np.clip(np.asarray(p, dtype=np.float64), 1e-12, 1.0 - 1e-12)
        losses[name] = -(yy * np.log(q) + (1.0 - yy) * np.log1p(-q))
    if not losses:
        raise ModelError("churn model: no candidate to choose from", remedy="Configure at least one candidate")
    order = [n for n in SIMPLICITY if n in losses] + [n for n in losses if n not in SIMPLICITY]
    best = min(order, key=lambda n: (float(np.mean(losses[n])), order.index(n)))
    n = max(yy.size, 1)
    selection: dict[str, dict[str, float]] = {}
    for name in order:
        diff = losses[name] - losses[best]
        se = float(np.std(diff, ddof=1) / math.sqrt(n)) if diff.size > 1 else 0.0
        selection[name] = {"log_loss": float(np.mean(losses[name])), "gap": float(np.mean(diff)), "se": se}
    champion = next(name for name in order if selection[name]["gap"] <= selection[name]["se"])
    return champion, selection


def _logit(p: np.ndarray) -> np.ndarray:
    q = np.clip(p, _EPS, 1.0 - _EPS)
    return np.asarray(np.log(q) - np.log1p(-q))


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return np.asarray(0.5 * (1.0 + np.tanh(0.5 * z)))


def _fit_platt(z: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Logistic regression of ``y`` on one input ``z`` (slope, intercept) by Newton's method."""
    a, b = 1.0, 0.0
    for _ in range(50):
        p = _sigmoid(a * z + b)
        w = p * (1.0 - p) + 1e-9
        g = np.array([np.sum((p - y) * z), np.sum(p - y)])
        h = np.array([[np.sum(w * z * z), np.sum(w * z)], [np.sum(w * z), np.sum(w)]]) + 1e-9 * np.eye(2)
        step = np.linalg.solve(h, g)
        a, b = a - float(step[0]), b - float(step[1])
        if float(np.max(np.abs(step))) < 1e-10:
            break
    return a, b


def _shift_to_mean(z: np.ndarray, target: float) -> float:
    """The constant ``d`` such that mean(sigmoid(z + d)) = target (bisection; the mean rises with d)."""
    lo, hi = -30.0, 30.0
    for _ in range(80):
        mid = (lo + hi) / 2.0
        if float(np.mean(_sigmoid(z + mid))) < target:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2.0


_LOGISTIC_INPUTS = ("frequency", "days_since_last", "tenure", "spend_mean")


def _log_rfm_columns(q: str) -> list[str]:
    """The features the logistic challenger reads (before log(1 + x))."""
    return [f"{q}_days", f"days_since_last_{q}", f"{q}_tenure_days", "spend_mean"]


def _log_rfm(frame: CutFrame, q: str) -> np.ndarray:
    """The challenger's inputs: log(1 + x) of repeat days, days since the last purchase, tenure, mean spend."""
    cols = _log_rfm_columns(q)
    idx = [frame.names.index(c) for c in cols]
    x = frame.X[:, idx].copy()
    x[:, 0] -= 1.0
    return np.asarray(np.log1p(np.maximum(np.nan_to_num(x), 0.0)))


@dataclass
class ChurnScores:
    """What a fitted :class:`ChurnModel` says about every customer at a cut."""

    customer_id: np.ndarray
    churn_probability: np.ndarray
    churn_driver: np.ndarray
    frame: CutFrame
    candidates: dict[str, np.ndarray] = field(default_factory=dict)


class ChurnModel:
    """Churn in the next ``horizon_days`` days = no event of ``qualifying_events``; see the module docstring.

    Example (not run: it needs an ``events`` table with enough history)::

        model = ChurnModel(horizon_days=30, qualifying_events=["purchase"]).fit(con, cut)
        scores = model.predict(con, cut)
    """

    def __init__(
        self,
        *,
        horizon_days: int,
        qualifying_events: Sequence[str],
        label_days: int | None = None,
        training_cuts: int = 4,
        cut_spacing_days: int | None = None,
        max_training_rows: int = 200_000,
        windows: Sequence[int] = DEFAULT_WINDOWS,
        n_estimators: int = 100,
        learning_rate: float = 0.1,
        num_leaves: int = 15,
        random_state: int = 0,
        candidates: Sequence[str] = CANDIDATES,
        num_threads: int = 1,
        exact_drivers: bool = False,
    ) -> None:
        self.horizon_days = int(horizon_days)
        self.qualifying_events = sorted({q.lower() for q in qualifying_events})
        self.label_days = int(label_days) if label_days else self.horizon_days
        self.training_cuts = int(training_cuts)
        self.cut_spacing_days = int(cut_spacing_days) if cut_spacing_days else self.label_days
        self.max_training_rows = int(max_training_rows)
        self.windows = tuple(sorted({int(w) for w in windows}))
        self.n_estimators = int(n_estimators)
        self.learning_rate = float(learning_rate)
        self.num_leaves = int(num_leaves)
        self.random_state = int(random_state)
        self.candidates = tuple(candidates)
        self.num_threads = int(num_threads)
        self.exact_drivers = bool(exact_drivers)
        if self.training_cuts < 3:
            raise ModelError(
                f"churn model: training_cuts must be at least 3 (got {self.training_cuts})",
                remedy="One cut to measure, one to calibrate and at least one to train on",
            )
        if not 1 <= self.label_days <= self.horizon_days:
            raise ModelError(
                f"churn model: label_days must be between 1 and horizon_days ({self.label_days})",
                remedy="Leave label_days unset to use the horizon",
            )
        unknown = set(self.candidates) - set(CANDIDATES)
        if unknown or not self.candidates:
            raise ModelError(
                f"churn model: unknown candidates {sorted(unknown)!r}", remedy=f"Use some of {', '.join(CANDIDATES)}"
            )
        self.state_: dict[str, Any] | None = None
        self._booster: Any = None
        self._path_table: tuple[np.ndarray, np.ndarray, float] | None = None

    # -- helpers -----------------------------------------------------------------------------------------
    @property
    def qualifying_label(self) -> str:
        """The fragment naming the qualifying events in feature names (``purchase`` or ``qualifying``)."""
        return feature_label(self.qualifying_events[0]) if len(self.qualifying_events) == 1 else "qualifying"

    def hyperparameters(self) -> dict[str, Any]:
        """The constructor's arguments, as stored with the model."""
        return {
            "horizon_days": self.horizon_days,
            "qualifying_events": list(self.qualifying_events),
            "label_days": self.label_days,
            "training_cuts": self.training_cuts,
            "cut_spacing_days": self.cut_spacing_days,
            "max_training_rows": self.max_training_rows,
            "windows": list(self.windows),
            "n_estimators": self.n_estimators,
            "learning_rate": self.learning_rate,
            "num_leaves": self.num_leaves,
            "random_state": self.random_state,
            "candidates": list(self.candidates),
            "num_threads": self.num_threads,
            "exact_drivers": self.exact_drivers,
        }

    def training_cut_dates(self, scoring_cut: datetime) -> list[datetime]:
        """``c_0 .. c_{K−1}``, newest first."""
        base = _naive_utc(scoring_cut) - timedelta(days=self.label_days)
        return [base - timedelta(days=k * self.cut_spacing_days) for k in range(self.training_cuts)]

    def _frame(self, con: duckdb.DuckDBPyConnection, cut: datetime, event_types: Sequence[str]) -> CutFrame:
        return build_cut_frame(
            con, cut, self.qualifying_events, event_types=event_types, label_days=self.label_days, windows=self.windows
        )

    def _train_gbm(self, X: np.ndarray, y: np.ndarray, names: Sequence[str]) -> Any:
        import lightgbm as lgb

        params = {
            "objective": "binary",
            "learning_rate": self.learning_rate,
            "num_leaves": self.num_leaves,
            "min_data_in_leaf": 50,
            "max_depth": 5,
            "feature_fraction": 0.9,
            "bagging_fraction": 0.8,
            "bagging_freq": 1,
            "lambda_l2": 1.0,
            "seed": self.random_state,
            "num_threads": self.num_threads,
            "verbose": -1,
            "deterministic": True,
            "force_col_wise": True,
            "max_bin": 63,
        }
        data = lgb.Dataset(X, label=y, feature_name=list(names), free_raw_data=True)
        return lgb.train(params, data, num_boost_round=self.n_estimators)

    def _train_logistic(self, x: np.ndarray, y: np.ndarray) -> dict[str, list[float]]:
        from sklearn.linear_model import LogisticRegression

        mean = x.mean(axis=0)
        std = x.std(axis=0)
        std[std == 0] = 1.0
        fit = LogisticRegression(C=1.0, max_iter=500).fit((x - mean) / std, y)
        return {
            "mean": mean.tolist(),
            "std": std.tolist(),
            "coef": fit.coef_.ravel().tolist(),
            "intercept": [float(fit.intercept_[0])],
        }

    @staticmethod
    def _logistic_logit(x: np.ndarray, params: dict[str, list[float]]) -> np.ndarray:
        z = (x - np.asarray(params["mean"])) / np.asarray(params["std"])
        return np.asarray(z @ np.asarray(params["coef"]) + params["intercept"][0])

    def _raw_logit(
        self, name: str, frame: CutFrame, booster: Any, logistic: dict[str, list[float]] | None
    ) -> np.ndarray:
        if name == "gbm":
            return np.asarray(booster.predict(frame.X, raw_score=True, num_threads=self.num_threads))
        if name == "logistic":
            assert logistic is not None
            return self._logistic_logit(_log_rfm(frame, self.qualifying_label), logistic)
        return _logit(frame.X[:, frame.names.index("btyd_p_no_purchase")])

    def _subsample(self, frames: Sequence[CutFrame]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Stacked (X, log-RFM, y) of ``frames``, at most ``max_training_rows`` rows (uniform, seeded)."""
        X = np.vstack([f.X for f in frames])
        L = np.vstack([_log_rfm(f, self.qualifying_label) for f in frames])
        y = np.concatenate([f.labels for f in frames if f.labels is not None])
        if X.shape[0] > self.max_training_rows:
            keep = np.random.default_rng(self.random_state).choice(X.shape[0], self.max_training_rows, replace=False)
            keep.sort()
            X, L, y = X[keep], L[keep], y[keep]
        return X, L, y

    def _train_and_calibrate(
        self, train: Sequence[CutFrame], calibrate: CutFrame
    ) -> tuple[Any, dict[str, list[float]] | None, dict[str, tuple[float, float]]]:
        X, L, y = self._subsample(train)
        if y.min() == y.max():
            raise ModelError(
                "churn model: every training customer has the same outcome (all churned or none)",
                remedy="Check the horizon and the qualifying events, or add history",
            )
        booster = self._train_gbm(X, y, train[0].names) if "gbm" in self.candidates else None
        logistic = self._train_logistic(L, y) if "logistic" in self.candidates else None
        assert calibrate.labels is not None
        platt = {
            name: _fit_platt(self._raw_logit(name, calibrate, booster, logistic), calibrate.labels)
            for name in self.candidates
        }
        return booster, logistic, platt

    def _sample_share(self, con: duckdb.DuckDBPyConnection, newest_cut: datetime) -> float:
        """Share of customers to train on so that the stacked rows stay near ``max_training_rows``."""
        marks = ", ".join("?" for _ in self.qualifying_events)
        row = con.execute(
            f"SELECT count(DISTINCT customer_id) FROM events WHERE occurred_at < ? AND lower(event_type) IN ({marks})",
            [_naive_utc(newest_cut), *self.qualifying_events],
        ).fetchall()
        customers = int(row[0][0]) if row else 0
        stacked = customers * (self.training_cuts - 1)
        return 1.0 if stacked <= self.max_training_rows else self.max_training_rows / stacked

    # -- the estimator ------------------------------------------------------------------------------------
    def fit(
        self, con: duckdb.DuckDBPyConnection, scoring_cut: datetime, *, fit_time: datetime | None = None
    ) -> ChurnModel:
        """Train on the stacked cuts before ``scoring_cut``, validate, pick the champion, calibrate."""
        cuts = self.training_cut_dates(scoring_cut)
        event_types = discover_event_types(con, scoring_cut)
        frames: list[CutFrame] = []
        share = self._sample_share(con, cuts[0])
        with _customer_sample(con, share, before=scoring_cut):
            for cut in cuts:
                try:
                    frame = self._frame(con, cut, event_types)
                except DataError:
                    break  # no customers yet at this cut: the older ones have none either
                frame.labels = label_churn(
                    con, frame.customer_id, cut, self.label_days, self.qualifying_events, scoring_cut=scoring_cut
                )
                frames.append(frame)
        if len(frames) < 3:
            first = cuts[-1]
            raise DataError(
                f"churn model: not enough history: {self.training_cuts} training cuts need customers from "
                f"{first:%Y-%m-%d} on, with labels of {self.label_days} days (got {len(frames)} usable cuts)",
                remedy="Lower model.training_cuts, model.cut_spacing_days or model.label_days, or use model.kind = "
                '"bgnbd"',
            )
        # Validation: train on c_2.., calibrate on c_1, measure on c_0.
        booster, logistic, platt = self._train_and_calibrate(frames[2:], frames[1])
        newest = frames[0]
        assert newest.labels is not None
        validation: dict[str, dict[str, float]] = {}
        curves: dict[str, dict[str, dict[str, list[float]]]] = {}
        predictions: dict[str, np.ndarray] = {}
        for name in self.candidates:
            a, b = platt[name]
            p = _sigmoid(a * self._raw_logit(name, newest, booster, logistic) + b)
            predictions[name] = p
            validation[name] = churn_metrics(newest.labels, p)
            curves[name] = {
                "calibration": calibration_curve(newest.labels, p),
                "gains": gains_by_decile(newest.labels, p),
            }
        champion, selection = choose_champion(newest.labels, predictions)
        best = min(selection, key=lambda n: (selection[n]["log_loss"], CANDIDATES.index(n)))
        others = ", ".join(
            f"{n} {validation[n]['log_loss']:.4f} (AUC {validation[n]['auc']:.3f})"
            for n in self.candidates
            if n != champion
        )
        if champion == best:
            why = f"lowest validation log-loss {validation[champion]['log_loss']:.4f}"
        else:
            why = (
                f"simplest candidate within one standard error of the lowest validation log-loss "
                f"({best} {validation[best]['log_loss']:.4f}; {champion} {validation[champion]['log_loss']:.4f}, "
                f"{selection[champion]['gap']:.4f} above it, standard error {selection[champion]['se']:.4f})"
            )
        reason = (
            f"{champion}: {why} "
            f"(AUC {validation[champion]['auc']:.3f}, lift quality {validation[champion]['lift_quality']:.1%}) "
            f"on the window starting {cuts[0]:%Y-%m-%d}" + (f"; others: {others}" if others else "")
        )
        # Final: train on c_1.., calibrate on c_0.
        booster, logistic, platt = self._train_and_calibrate(frames[1:], frames[0])
        self._booster = booster
        self._path_table = None
        self.state_ = {
            "champion": champion,
            "reason": reason,
            "validation": validation,
            "selection": selection,
            "validation_curves": curves,
            "platt": {k: list(v) for k, v in platt.items()},
            "logistic": logistic,
            "event_types": list(event_types),
            "feature_names": list(frames[0].names),
            "training_cuts": [c.isoformat() for c in cuts[: len(frames)]],
            "scoring_cut": _naive_utc(scoring_cut).isoformat(),
            "training_rows": int(sum(len(f.customer_id) for f in frames[1:])),
            "customer_sample_share": min(share, 1.0) if share < 0.9 else 1.0,
            "level_anchor": "calibration_window" if self.label_days == self.horizon_days else "btyd_aggregate",
            "fitted_at": (fit_time or datetime.now(UTC)).isoformat(),
            "feature_importance": self._importance(booster, logistic, frames[0].names),
        }
        return self

    def _importance(
        self, booster: Any, logistic: dict[str, list[float]] | None, names: Sequence[str]
    ) -> dict[str, dict[str, float]]:
        """Per candidate, each input's share of the model's importance, in marketer words (as ``churn_driver``),
        summing to 1: the GBM's total split gain, the challenger's absolute standardised coefficients."""
        out: dict[str, dict[str, float]] = {}
        raw: dict[str, tuple[Sequence[str], np.ndarray]] = {}
        if booster is not None:
            raw["gbm"] = (list(names), np.asarray(booster.feature_importance(importance_type="gain"), dtype=float))
        if logistic is not None:
            raw["logistic"] = (
                _log_rfm_columns(self.qualifying_label),
                np.abs(np.asarray(logistic["coef"], dtype=float)),
            )
        for name, (features, weights) in raw.items():
            total = float(np.nansum(weights))
            if not total > 0.0:
                continue  # no split, or all coefficients zero: nothing to rank
            shares: dict[str, float] = {}
            for feature, weight in zip(features, weights / total, strict=True):
                word = _DRIVER_WORDS.get(feature, feature)
                shares[word] = shares.get(word, 0.0) + float(np.nan_to_num(weight))
            out[name] = shares
        return out

    @property
    def is_fitted(self) -> bool:
        """True once :meth:`fit` or :meth:`from_dict` has run."""
        return self.state_ is not None

    def _state(self) -> dict[str, Any]:
        if self.state_ is None:
            raise NotFittedError("churn model: not fitted yet", remedy="Call fit() or load a model from the registry")
        return self.state_

    @property
    def champion_(self) -> str:
        """The candidate that scores: ``gbm``, ``logistic`` or ``bgnbd``."""
        return str(self._state()["champion"])

    @property
    def reason_(self) -> str:
        """Why the champion was chosen, in one sentence with the validation figures."""
        return str(self._state()["reason"])

    @property
    def feature_importance_(self) -> dict[str, dict[str, float]]:
        """Per candidate, each input's share of importance (see :meth:`_importance`); empty for a model saved
        before importance was recorded."""
        value = self._state().get("feature_importance")
        return dict(value) if isinstance(value, dict) else {}

    @property
    def validation_curves_(self) -> dict[str, dict[str, dict[str, list[float]]]]:
        """Per candidate, its curves on the validation window: ``calibration`` (per probability bin: ``predicted``,
        ``observed``, ``count``) and ``gains`` (per decile: ``rate``, ``gains``, ``lift``); empty for a model saved
        before the curves were recorded."""
        value = self._state().get("validation_curves")
        return dict(value) if isinstance(value, dict) else {}

    @property
    def validation_(self) -> dict[str, dict[str, float]]:
        """Validation measures per candidate (time split: most recent fully labelled window)."""
        return dict(self._state()["validation"])

    def predict(self, con: duckdb.DuckDBPyConnection, cut: datetime, *, all_candidates: bool = False) -> ChurnScores:
        """Calibrated P(no qualifying event in the next ``horizon_days`` days) for every customer at ``cut``."""
        frame = self._frame(con, cut, self._state()["event_types"])
        return self.predict_frame(frame, all_candidates=all_candidates)

    def predict_frame(
        self, frame: CutFrame, *, all_candidates: bool = False, level_target: float | None = None
    ) -> ChurnScores:
        """:meth:`predict` on features already built. ``level_target``: the mean BG/NBD P(no purchase) of the
        whole scored base when ``frame`` holds only part of it (a Spark partition); None computes it on ``frame``.
        """
        state = self._state()
        if list(frame.names) != list(state["feature_names"]):
            raise ModelError(
                "churn model: the features at scoring time differ from those the model was trained on",
                remedy="Retrain with `churnsync train`",
            )
        names = [state["champion"], *([c for c in self.candidates if c != state["champion"]] if all_candidates else [])]
        drivers, gbm_raw = self._drivers_and_raw(frame)
        out: dict[str, np.ndarray] = {}
        for name in names:
            a, b = state["platt"][name]
            raw = gbm_raw if name == "gbm" and gbm_raw is not None else None
            if raw is None:
                raw = self._raw_logit(name, frame, self._booster, state["logistic"])
            z = a * raw + b
            if state["level_anchor"] == "btyd_aggregate":
                target = level_target if level_target is not None else self.level_target(frame.rfm, frame.btyd)
                z = z + _shift_to_mean(z, target)
            out[name] = np.clip(_sigmoid(z), 0.0, 1.0)
        return ChurnScores(
            customer_id=frame.customer_id,
            churn_probability=out[state["champion"]],
            churn_driver=drivers,
            frame=frame,
            candidates=out,
        )

    def level_target(self, rfm: RFMFrame, btyd: BetaGeoModel, weights: np.ndarray | None = None) -> float:
        """The mean BG/NBD P(no qualifying event in ``horizon_days``) over ``rfm``'s rows (weighted by ``weights``,
        e.g. the count of customers of each distinct row): the level a ``btyd_aggregate`` anchor shifts to."""
        t = self.horizon_days / BTYD_UNIT_DAYS
        p = btyd.prob_no_purchase(t, rfm.frequency, rfm.recency, rfm.T)
        return float(np.mean(p) if weights is None else np.average(p, weights=weights))

    def drivers(self, frame: CutFrame) -> np.ndarray:
        """Per customer, the feature with the largest positive LightGBM contribution to churn, in marketer words
        (``none`` when no feature raises the score, or without a GBM)."""
        return self._drivers_and_raw(frame)[0]

    def _drivers_and_raw(self, frame: CutFrame) -> tuple[np.ndarray, np.ndarray | None]:
        """:meth:`drivers`, and with path attribution also the GBM's raw score, from the same pass over the trees
        (raw = the roots' values + the row's contributions): scoring then reads every tree once, not twice."""
        n = len(frame.customer_id)
        if self._booster is None:
            return np.full(n, "none", dtype=object), None
        best = np.empty(n, dtype=np.int64)
        raw = None if self.exact_drivers else np.empty(n, dtype=np.float64)
        # In blocks of rows: the leaf indices and contributions of a million customers at once would take GiBs.
        for start in range(0, n, _DRIVER_BLOCK):
            contrib = self.contributions(frame.X[start : start + _DRIVER_BLOCK])
            top = np.argmax(contrib, axis=1)
            top[contrib[np.arange(contrib.shape[0]), top] <= 0.0] = len(frame.names)
            best[start : start + _DRIVER_BLOCK] = top
            if raw is not None and self._path_table is not None:
                raw[start : start + _DRIVER_BLOCK] = contrib.sum(axis=1) + self._path_table[2]
        words = np.array([_DRIVER_WORDS.get(f, f) for f in frame.names] + ["none"], dtype=object)
        return np.asarray(words[best]), raw

    def contributions(self, X: np.ndarray) -> np.ndarray:
        """Per-row, per-feature contributions to the GBM's raw (log-odds) churn score.

        ``exact_drivers=True``: LightGBM's TreeSHAP (``pred_contrib=True``). Otherwise path attribution
        (Saabas): each split on the way to a row's leaf credits its feature with the change in the node's
        expected value. Both sum to the raw score minus the base value; the path form costs one leaf lookup
        per tree (``pred_leaf=True``) and a sparse product, where TreeSHAP took ~13 s per 20k rows here.
        """
        if self._booster is None:
            raise NotFittedError("churn model: no GBM to explain", remedy="Fit with the gbm candidate")
        if self.exact_drivers:
            return np.asarray(self._booster.predict(X, pred_contrib=True, num_threads=self.num_threads))[:, :-1]
        from scipy import sparse

        if self._path_table is None:
            dump = self._booster.dump_model()
            self._path_table = (*_path_tables(dump, X.shape[1]), _root_total(dump))
        table, offsets, _ = self._path_table
        leaves = np.asarray(self._booster.predict(X, pred_leaf=True, num_threads=self.num_threads), dtype=np.int32)
        n, trees = leaves.shape
        cols = (leaves + offsets[None, :trees].astype(np.int32)).ravel()
        indptr = np.arange(0, n * trees + 1, trees, dtype=np.int64)
        hits = sparse.csr_matrix((np.ones(cols.size, dtype=np.float64), cols, indptr), shape=(n, table.shape[0]))
        return np.asarray(hits @ table)

    # -- persistence ---------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """JSON-ready state (the LightGBM model as its text format): no pickle, so loading runs no code."""
        state = dict(self._state())
        state["gbm"] = self._booster.model_to_string() if self._booster is not None else None
        return {"model": "churn", "format": 1, "hyperparameters": self.hyperparameters(), "state": state}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ChurnModel:
        """Rebuild a fitted model from :meth:`to_dict`'s output."""
        if d.get("model") != "churn" or d.get("format") != 1:
            raise ModelError(
                f"churn model: unsupported artifact (model {d.get('model')!r}, format {d.get('format')!r})",
                remedy="Retrain with `churnsync train`",
            )
        model = cls(**d["hyperparameters"])
        state = dict(d["state"])
        text = state.pop("gbm", None)
        if text is not None:
            import lightgbm as lgb

            model._booster = lgb.Booster(model_str=text)
        model.state_ = state
        return model


_SAMPLE_SCHEMA = "churnsync_training_sample"
_HASH_MOD = 1_000_003


@contextlib.contextmanager
def _customer_sample(con: duckdb.DuckDBPyConnection, share: float, *, before: datetime) -> Iterator[None]:
    """While open, ``events`` in ``con`` holds only a fixed hash sample of the customers (a ``share`` of them),
    events before ``before`` only: the training cuts then cost what the sample costs. A no-op for share ≥ 0.9."""
    if share >= 0.9:
        yield
        return
    rows = con.execute("SELECT current_setting('search_path')").fetchall()
    previous = str(rows[0][0]) if rows and rows[0][0] is not None else ""
    con.execute(f"CREATE SCHEMA IF NOT EXISTS {_SAMPLE_SCHEMA}")
    con.execute(
        f"CREATE OR REPLACE TABLE {_SAMPLE_SCHEMA}.events AS SELECT * FROM events "
        f"WHERE occurred_at < ? AND hash(customer_id) % {_HASH_MOD} < ?",
        [_naive_utc(before), math.ceil(share * _HASH_MOD)],
    )
    con.execute(f"SET search_path = '{_SAMPLE_SCHEMA},main'")
    try:
        yield
    finally:
        if previous:
            quoted = previous.replace("'", "''")
            con.execute(f"SET search_path = '{quoted}'")
        else:
            con.execute("RESET search_path")
        con.execute(f"DROP SCHEMA {_SAMPLE_SCHEMA} CASCADE")


def _root_total(dump: dict[str, Any]) -> float:
    """The sum over trees of the root's value: the raw score of a row whose path contributions are all zero."""
    total = 0.0
    for info in dump["tree_info"]:
        root = info["tree_structure"]
        total += float(
            root["leaf_value"] if "leaf_index" in root or "split_feature" not in root else root["internal_value"]
        )
    return total


def _path_tables(dump: dict[str, Any], n_features: int) -> tuple[np.ndarray, np.ndarray]:
    """For every leaf of every tree, the path attribution per feature; rows stacked tree after tree."""
    blocks: list[np.ndarray] = []
    offsets: list[int] = []
    total = 0
    for info in dump["tree_info"]:
        root = info["tree_structure"]
        leaves = int(info["num_leaves"])
        block = np.zeros((leaves, n_features))
        stack: list[tuple[dict[str, Any], np.ndarray]] = [(root, np.zeros(n_features))]
        while stack:
            node, acc = stack.pop()
            if "leaf_index" in node:
                block[int(node["leaf_index"])] = acc
                continue
            value = float(node["internal_value"])
            feature = int(node["split_feature"])
            for child in (node["left_child"], node["right_child"]):
                child_value = float(child["leaf_value"] if "leaf_index" in child else child["internal_value"])
                step = acc.copy()
                step[feature] += child_value - value
                stack.append((child, step))
        blocks.append(block)
        offsets.append(total)
        total += leaves
    table = np.vstack(blocks) if blocks else np.zeros((0, n_features))
    return table, np.asarray(offsets, dtype=np.int64)


def finite_or_nan(value: float) -> float | None:
    """``value`` for JSON: None when it is not finite."""
    return value if math.isfinite(value) else None
