import locust  # noqa: F401

import dataclasses
import tracemalloc

import numpy as np
import pytest

from dg_locust.generator import Fleet
from dg_locust.model import FloatField, load_model, parse_model

STEPS = 100_000
SENSORS = 8

# Tolerances, against the model's parameters, for 100k steps of 8 sensors. Each is several standard errors of
# its estimate for the slowest-mixing model below (the fridge, whose walk forgets its past over ~100 steps), and
# the seeds are fixed, so the tests are deterministic and would still pass for other seeds.
MEAN_TOL = 0.1  # |mean of normal values - mean| < MEAN_TOL * stdev
SPREAD_TOL = 0.05  # relative, stdev of normal values over time and sensors
STEP_TOL = 0.05  # relative, root mean square of the change between consecutive normal values vs variance
ERROR_SHARE_TOL = 0.10  # relative, share of error values vs error_rate
RUN_LENGTH_TOL = 0.05  # relative, mean error run length vs error_length
BOOL_SHARE_TOL = 0.10  # relative, share of true values vs true_ratio


def _float_model(*, mean=5.0, stdev=1.0, lo=0.0, hi=10.0, variance=0.5, error_rate=0.0, error_length=1.0, ratio=0.3):
    def p(value):
        return {"value": value}

    return parse_model(
        {
            "t": {
                "tags": {"sensor": "id"},
                "fields": {
                    "x": {
                        "key": p("x"),
                        "type": p("FLOAT"),
                        "min": p(lo),
                        "max": p(hi),
                        "mean": p(mean),
                        "stdev": p(stdev),
                        "variance": p(variance),
                        "error_rate": p(error_rate),
                        "error_length": p(error_length),
                    },
                    "flag": {"key": p("flag"), "type": p("BOOL"), "true_ratio": p(ratio)},
                },
            }
        },
        source="test",
    )


# The fridge plus walks that exercise each way the error chain is built: long runs, runs so short that the chain
# flips state, and a mean close to a bound, where the mirroring at min does most of the shaping.
MODELS = {
    "fridge": load_model("temperature"),
    "long_errors": _float_model(error_rate=0.05, error_length=10.0),
    "flipping_errors": _float_model(error_rate=0.3, error_length=1.2, variance=1.0),
    "near_min": _float_model(mean=1.5, stdev=1.0, variance=0.3, error_rate=0.01, error_length=2.0, ratio=0.9),
}


def _run_lengths(mask: np.ndarray) -> np.ndarray:
    """Lengths of the runs of True down each column."""
    padded = np.zeros((mask.shape[0] + 2, mask.shape[1]), dtype=np.int8)
    padded[1:-1] = mask
    edges = np.diff(padded, axis=0)
    starts = np.nonzero(edges.T == 1)
    ends = np.nonzero(edges.T == -1)
    return ends[1] - starts[1]


def _last_normal(values: np.ndarray, error: np.ndarray) -> np.ndarray:
    """For every (step, sensor), the sensor's latest normal value at or before that step (nan before the first)."""
    index = np.where(error, -1, np.arange(len(values))[:, None])
    np.maximum.accumulate(index, axis=0, out=index)
    held = np.take_along_axis(values, np.maximum(index, 0), axis=0)
    held[index < 0] = np.nan
    return held


@pytest.fixture(scope="module", params=list(MODELS), ids=list(MODELS))
def generated(request):
    model = MODELS[request.param]
    values, errors = Fleet(model, np.arange(1, SENSORS + 1), seed=7).next_steps_with_errors(STEPS)
    return model, values, errors


def _float_fields(model):
    return [f for f in model.fields if isinstance(f, FloatField)]


def test_normal_values_have_the_model_mean_and_stay_within_min_max(generated):
    model, values, errors = generated
    for spec in _float_fields(model):
        normal = values[spec.column][~errors[spec.column]]

        assert abs(normal.mean() - spec.mean) < MEAN_TOL * spec.stdev
        assert normal.min() >= spec.min
        assert normal.max() <= spec.max


def test_normal_values_spread_like_stdev(generated):
    model, values, errors = generated
    for spec in _float_fields(model):
        normal = values[spec.column][~errors[spec.column]]

        assert normal.std() == pytest.approx(spec.stdev, rel=SPREAD_TOL)


def test_typical_step_between_normal_values_is_variance(generated):
    model, values, errors = generated
    for spec in _float_fields(model):
        v, error = values[spec.column], errors[spec.column]
        steps = np.concatenate([np.diff(v[~error[:, j], j]) for j in range(SENSORS)])

        assert np.sqrt(np.mean(steps**2)) == pytest.approx(spec.variance, rel=STEP_TOL)


def test_error_share_and_run_length_follow_the_model(generated):
    model, _, errors = generated
    for spec in _float_fields(model):
        error = errors[spec.column]

        assert error.mean() == pytest.approx(spec.error_rate, rel=ERROR_SHARE_TOL)
        assert _run_lengths(error).mean() == pytest.approx(spec.error_length, rel=RUN_LENGTH_TOL)


def test_error_values_lie_outside_mean_stdev_on_the_side_of_the_last_normal_value(generated):
    model, values, errors = generated
    for spec in _float_fields(model):
        v, error = values[spec.column], errors[spec.column]
        held = _last_normal(v, error)[error]
        wrong = v[error]
        # Rounding to a precision moves a value by at most half a unit: an error value may land on mean ± stdev,
        # and a normal value within half a unit of the mean may have been on either side of it (the side is chosen
        # from the unrounded walk).
        slack = 0.5 * 10.0**-spec.precision if spec.precision is not None else 0.0
        known = ~np.isnan(held) & (np.abs(held - spec.mean) > slack)
        below = held[known] < spec.mean
        low, high = spec.mean - spec.stdev + slack, spec.mean + spec.stdev - slack

        assert ((wrong <= low) | (wrong >= high)).all()
        assert ((wrong >= spec.min) & (wrong <= spec.max)).all()
        assert (wrong[known][below] <= low).all()
        assert (wrong[known][~below] >= high).all()


def test_bool_share_is_true_ratio(generated):
    model, values, _ = generated
    for spec in model.fields:
        if not isinstance(spec, FloatField):
            assert values[spec.column].mean() == pytest.approx(spec.true_ratio, rel=BOOL_SHARE_TOL)


def test_walk_resumes_from_the_last_normal_value_after_an_error():
    model = MODELS["long_errors"]
    values, errors = Fleet(model, np.arange(1, SENSORS + 1), seed=3).next_steps_with_errors(20_000)
    v, error = values["x"], errors["x"]
    # Steps from the last normal value before an error run to the first normal value after it.
    after = (~error[1:]) & error[:-1]
    held = _last_normal(v, error)[:-1][after]
    across = v[1:][after] - held
    within = np.diff(v, axis=0)[(~error[1:]) & (~error[:-1])]

    assert after.sum() > 500
    assert np.sqrt(np.mean(across**2)) == pytest.approx(np.sqrt(np.mean(within**2)), rel=0.15)


def test_next_steps_shapes_and_types():
    model = load_model("power_plant")
    fleet = Fleet(model, np.arange(1, 101), seed=1)

    batch = fleet.next_steps(7)

    assert list(batch) == model.field_columns()
    for spec in model.fields:
        array = batch[spec.column]
        assert array.shape == (7, 100)
        assert array.dtype == (np.float64 if isinstance(spec, FloatField) else np.bool_)
    assert all(array.shape == (0, 100) for array in fleet.next_steps(0).values())
    assert fleet.tags.keys() == {"region", "park", "unit", "turbine"}
    assert fleet.tags["turbine"].tolist() == list(range(1, 101))


def test_same_seed_and_ids_give_the_same_data():
    model = load_model("power_plant")
    first = Fleet(model, np.arange(1, 51), seed=11)
    second = Fleet(model, np.arange(1, 51), seed=11)

    for _ in range(3):
        a, b = first.next_steps(40), second.next_steps(40)
        assert all(np.array_equal(a[column], b[column]) for column in a)


def test_other_seed_or_other_ids_give_other_data():
    model = _full_precision(load_model("temperature"))  # two decimals make equal values common by chance
    base = Fleet(model, np.arange(1, 51), seed=11).next_steps(40)["value"]
    other_seed = Fleet(model, np.arange(1, 51), seed=12).next_steps(40)["value"]
    other_ids = Fleet(model, np.arange(51, 101), seed=11).next_steps(40)["value"]

    assert not np.isclose(base, other_seed).any()
    assert not np.isclose(base, other_ids).any()


def test_split_calls_give_the_same_data_as_one_call():
    model = MODELS["long_errors"]
    whole, whole_errors = Fleet(model, np.arange(1, 21), seed=5).next_steps_with_errors(1000)
    fleet = Fleet(model, np.arange(1, 21), seed=5)
    parts = [fleet.next_steps_with_errors(n) for n in (1, 399, 0, 600)]

    assert np.array_equal(np.concatenate([e["x"] for _, e in parts]), whole_errors["x"])
    assert np.array_equal(np.concatenate([v["flag"] for v, _ in parts]), whole["flag"])
    # The walk is summed in another order, so floats agree to rounding, not bit for bit.
    np.testing.assert_allclose(np.concatenate([v["x"] for v, _ in parts]), whole["x"], rtol=1e-12)


def test_each_call_continues_where_the_previous_one_stopped():
    model = _float_model(variance=0.2)
    fleet = Fleet(model, np.arange(1, SENSORS + 1), seed=9)
    calls = [fleet.next_steps(50)["x"] for _ in range(400)]
    boundary = np.array([calls[i + 1][0] - calls[i][-1] for i in range(len(calls) - 1)])
    within = np.concatenate([np.diff(call, axis=0) for call in calls])

    assert np.sqrt(np.mean(boundary**2)) == pytest.approx(0.2, rel=0.15)
    assert np.sqrt(np.mean(within**2)) == pytest.approx(0.2, rel=0.05)
    assert np.abs(boundary).max() < 6 * 0.2


def test_unreachable_spread_near_a_bound_keeps_the_mean_and_narrows():
    # No mirrored walk has mean 0.5 with stdev 1 above a bound at 0; the mean is kept and the spread shrinks.
    model = _float_model(mean=0.5, stdev=1.0, variance=0.2)
    values = Fleet(model, np.arange(1, SENSORS + 1), seed=2).next_steps(50_000)["x"]

    assert values.mean() == pytest.approx(0.5, abs=0.05)
    assert values.min() >= 0.0
    assert 0.2 < values.std() < 1.0


def test_constant_field_when_stdev_is_zero():
    values = Fleet(_float_model(stdev=0.0), np.arange(1, 4), seed=1).next_steps(100)["x"]

    assert (values == 5.0).all()


def test_bad_arguments_are_rejected():
    model = load_model("temperature")

    with pytest.raises(ValueError, match="steps must be >= 0"):
        Fleet(model, np.arange(1, 3), seed=1).next_steps(-1)
    with pytest.raises(ValueError, match="seed must be >= 0"):
        Fleet(model, np.arange(1, 3), seed=-1)
    with pytest.raises(ValueError, match="1-d array"):
        Fleet(model, np.ones((2, 2), dtype=int), seed=1)


def test_bounds_far_beyond_the_spread_give_the_plain_walk():
    """Regression: min/max of +-1e300 around a stdev of 1e5 once divided by zero while solving the mirrored walk."""
    model = parse_model(
        {
            "t": {
                "tags": {"sensor_id": "id"},
                "fields": {
                    "v": {
                        "key": {"value": "v"},
                        "type": {"value": "FLOAT"},
                        "min": {"value": -1e300},
                        "max": {"value": 1e300},
                        "mean": {"value": 0.0},
                        "stdev": {"value": 1e5},
                        "variance": {"value": 1e4},
                        "error_rate": {"value": 0.0},
                        "error_length": {"value": 1.0},
                    }
                },
            }
        },
        "extreme",
    )
    values = Fleet(model, np.arange(1, 9), seed=3).next_steps(20_000)["v"]
    assert np.isfinite(values).all()
    assert abs(values.std() / 1e5 - 1) < 0.15


def test_rows_in_parts_of_steps_are_the_rows_of_whole_steps():
    model = MODELS["flipping_errors"]
    whole = Fleet(model, np.arange(1, 21), seed=4).next_steps(300)
    fleet = Fleet(model, np.arange(1, 21), seed=4)
    # Parts that start and end mid-step, stay inside one step, span several, and fall on step boundaries.
    sizes = [3, 17, 0, 20, 41, 1, 19, 200, 7, 13, 40, 5639]
    parts = [fleet.next_rows(size) for size in sizes]

    assert [len(part["x"]) for part in parts] == sizes
    assert np.array_equal(np.concatenate([part["flag"] for part in parts]), whole["flag"].ravel())
    # Error values are drawn where the error chain says, so equal floats also mean equal error positions.
    np.testing.assert_allclose(np.concatenate([part["x"] for part in parts]), whole["x"].ravel(), rtol=1e-12)


def test_whole_steps_need_a_fleet_at_a_step_boundary():
    fleet = Fleet(load_model("temperature"), np.arange(1, 11), seed=1)
    fleet.next_rows(25)
    with pytest.raises(ValueError, match="whole steps"):
        fleet.next_steps(1)
    fleet.next_rows(5)
    assert fleet.next_steps(2)["value"].shape == (2, 10)


def test_a_million_sensors_cost_a_few_bytes_each_and_a_part_of_a_step_costs_only_its_rows():
    tracemalloc.start()
    try:
        ids = np.arange(1, 1_000_001)
        before = tracemalloc.get_traced_memory()[0]
        fleet = Fleet(load_model("factory"), ids, seed=2)  # 3 FLOAT fields, 1 BOOL
        state = tracemalloc.get_traced_memory()[0] - before
        fleet.next_rows(999_990)  # to the end of step 0, then across into step 1
        tracemalloc.reset_peak()
        start = tracemalloc.get_traced_memory()[0]
        rows = fleet.next_rows(1000)
        peak = tracemalloc.get_traced_memory()[1] - start
    finally:
        tracemalloc.stop()
    assert len(rows["spindle_rpm"]) == 1000
    assert state < 3 * 10 * 1_000_000  # walk position and error state: 9 bytes per sensor and FLOAT field
    assert peak < 1_000 * 4 * 100  # a few temporaries of the 1000 rows, nothing of the million sensors


def _full_precision(model):
    """The model with every field's values left as full doubles."""
    fields = tuple(dataclasses.replace(f, precision=None) if isinstance(f, FloatField) else f for f in model.fields)
    return dataclasses.replace(model, fields=fields)
