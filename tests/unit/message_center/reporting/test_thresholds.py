"""ACC's warning / alert options: defaults, environment values, refusals naming the
variable, and the classification the pages colour by."""

from __future__ import annotations

import pytest

from message_center.reporting import ThresholdError, Thresholds, classify, load_thresholds

pytestmark = pytest.mark.fast


def test_defaults():
    limits = load_thresholds({})
    assert limits == Thresholds()
    assert (limits.avg_queue_ms.warning, limits.avg_queue_ms.alert) == (5000, 30000)
    assert (limits.avg_sending_ms.warning, limits.avg_sending_ms.alert) == (5000, 30000)
    assert (limits.avg_total_ms.warning, limits.avg_total_ms.alert) == (10000, 60000)
    assert (limits.error_rate.warning, limits.error_rate.alert) == (0.05, 0.2)
    assert (limits.queue_size.warning, limits.queue_size.alert) == (100, 400)
    described = limits.to_dict()
    assert set(described) == {"avgQueueMs", "avgSendingMs", "avgTotalMs", "errorRate",
                              "queueSize"}
    assert described["avgQueueMs"]["env"] == {"warning": "MC_RtEventAvgQueueTimeWarning",
                                              "alert": "MC_RtEventAvgQueueTimeAlert",
                                              "unit": "s"}


def test_values_from_the_environment_in_acc_units():
    limits = load_thresholds({
        "MC_RtEventAvgQueueTimeWarning": "0.5", "MC_RtEventAvgQueueTimeAlert": "2",
        "MC_RtEventAvgDeliveryTimeWarning": " 1 ", "MC_RtEventAvgDeliveryTimeAlert": "",
        "MC_RtEventErrorWarning": "1", "MC_RtEventErrorAlert": "2.5",
        "MC_HEALTH_WARNING": "10", "MC_HEALTH_ALERT": "20", "MC_RtEventQueueAlert": "50"})
    assert (limits.avg_queue_ms.warning, limits.avg_queue_ms.alert) == (500, 2000)
    assert (limits.avg_sending_ms.warning, limits.avg_sending_ms.alert) == (1000, 30000)
    assert (limits.error_rate.warning, limits.error_rate.alert) == (0.01, 0.025)
    assert (limits.queue_size.warning, limits.queue_size.alert) == (10, 50)  # health's, overridden


@pytest.mark.parametrize(("env", "variable", "message"), [
    ({"MC_RtEventErrorWarning": "five"}, "MC_RtEventErrorWarning", "must be a number"),
    ({"MC_RtEventErrorAlert": "120"}, "MC_RtEventErrorAlert", "percentage"),
    ({"MC_RtEventAvgQueueTimeWarning": "-1"}, "MC_RtEventAvgQueueTimeWarning", ">= 0"),
    ({"MC_RtEventAvgDeliveryTimeAlert": "nan"}, "MC_RtEventAvgDeliveryTimeAlert", "finite"),
    ({"MC_RtEventQueueWarning": "1.5"}, "MC_RtEventQueueWarning", "whole number"),
    ({"MC_RtEventAvgProcessingTimeWarning": "90"}, "MC_RtEventAvgProcessingTimeWarning",
     "above the alert threshold MC_RtEventAvgProcessingTimeAlert"),
    ({"MC_HEALTH_WARNING": "500"}, "MC_HEALTH_WARNING", "0 < warning <= alert"),
])
def test_bad_values_name_the_variable(env, variable, message):
    with pytest.raises(ThresholdError, match=message) as error:
        load_thresholds(env)
    assert error.value.variable == variable and str(error.value).startswith(variable)


def test_classify():
    assert [classify(v, 10, 20) for v in (None, 0, 9.99, 10, 19, 20, 1e9)] == [
        "none", "ok", "ok", "warning", "warning", "alert", "alert"]
    assert classify(float("nan"), 1, 2) == "none"
    assert classify(5, 5, 5) == "alert"  # equal thresholds: straight to alert
    limit = Thresholds().error_rate
    assert (limit.level(0.01), limit.level(0.05), limit.level(0.5)) == ("ok", "warning", "alert")
