"""A template the offline stack refuses as AWS does, deployed with no other offline stack running (moto's state is
process-wide, and test_offline_stack.py keeps one running through its module)."""

from __future__ import annotations

import pytest

from spotctl.offline.runtime import DEFAULT_TEMPLATE, OfflineControlPlane
from spotctl.offline.stack import REPO_ROOT, TemplateError

pytestmark = pytest.mark.integration


def test_template_with_a_rate_eventbridge_refuses_is_not_deployed(tmp_path):
    # GIVEN the template, its folders where they are, with the SLA guard's schedule at a rate of nothing
    text = DEFAULT_TEMPLATE.read_text(encoding="utf-8").replace("rate(5 minutes)", "rate(0 minutes)")
    for folder in ("functions/", "layers/", "statemachines/"):
        text = text.replace(f"Uri: {folder}", f"Uri: {REPO_ROOT / folder}/")
    template = tmp_path / "template.yaml"
    template.write_text(text, encoding="utf-8")
    # WHEN / THEN the stack is refused as AWS refuses it, naming the rule, rather than firing the guard forever
    refused = r"Every5Minutes.*ScheduleExpression: schedule 'rate\(0 minutes\)' is not a rate EventBridge takes"
    with pytest.raises(TemplateError, match=refused), OfflineControlPlane(template=template):
        pass
