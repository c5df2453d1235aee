"""The confirmation forms of operations: every value checked, every message in plain words."""

from __future__ import annotations

from django import forms

from reslock_web.models import Condition, Holder, Kind, Limit, OperationKind
from reslock_web.operations.plans import MAX_LIMIT

REASON_REQUIRED = {OperationKind.RELEASE_HOLDER, OperationKind.REPAIR_DRIFT}


class OperateForm(forms.Form):
    token = forms.UUIDField(widget=forms.HiddenInput)
    limit_id = forms.UUIDField(widget=forms.HiddenInput)
    holder = forms.IntegerField(widget=forms.HiddenInput, required=False)
    expected = forms.IntegerField(widget=forms.HiddenInput, required=False)
    value = forms.CharField(label="New limit", required=False, max_length=20)
    confirm_zero = forms.BooleanField(
        label="I understand that a limit of 0 blocks every run of this resource", required=False
    )
    reason = forms.CharField(
        label="Reason", required=False, max_length=1000, widget=forms.Textarea(attrs={"rows": 2})
    )
    crash_flow_run = forms.BooleanField(
        label="Also mark its flow run crashed: only if the whole flow run is dead (a live flow "
        "run would be stopped in the middle of its other tasks)",
        required=False,
    )
    accept_risk = forms.BooleanField(
        label="I take the risk: a run reslock cannot see may stand behind these slots, and "
        "would then share the resource with the next run",
        required=False,
    )

    def __init__(
        self, *args: object, kind: str, limit: Limit, holder: Holder | None = None, **kwargs: object
    ) -> None:
        super().__init__(*args, **kwargs)
        self.kind, self.limit = kind, limit
        if kind in REASON_REQUIRED:
            self.fields["reason"].required = True
            self.fields["reason"].error_messages["required"] = (
                "Say why: the reason goes into the audit trail."
            )
        if kind != OperationKind.SET_LIMIT:
            del self.fields["value"], self.fields["confirm_zero"], self.fields["expected"]
        if not (
            kind == OperationKind.RELEASE_HOLDER
            and holder is not None
            and holder.condition == Condition.STALE
            and holder.flow_run_id
        ):
            del self.fields["crash_flow_run"]
        if kind == OperationKind.REPAIR_DRIFT and limit.kind != Kind.TAG:
            # Prefect cannot list the leases of a global or deployment limit: nobody can show
            # that none stands behind a counted slot, so lowering it is the operator's call.
            self.fields["accept_risk"].required = True
            self.fields["accept_risk"].error_messages["required"] = (
                "Lowering this counter needs your explicit acceptance of the risk."
            )
        else:
            del self.fields["accept_risk"]

    def clean_limit_id(self):
        value = self.cleaned_data["limit_id"]
        if value != self.limit.prefect_id:
            raise forms.ValidationError(
                "This form was made for another limit: reload the resource page."
            )
        return value

    def clean_value(self) -> int:
        text = (self.cleaned_data.get("value") or "").strip()
        if not text:
            raise forms.ValidationError("Enter the new limit, a whole number from 0 to 10,000.")
        if not (text.isascii() and text.isdigit()):  # not "²" or "١٢", which int() mangles
            raise forms.ValidationError(f"{text!r} is not a whole number from 0 to 10,000.")
        number = int(text)
        if number > MAX_LIMIT:
            raise forms.ValidationError(f"{number} is more than 10,000.")
        return number

    def clean(self) -> dict:
        cleaned = super().clean()
        if (
            self.kind == OperationKind.SET_LIMIT
            and cleaned.get("value") == 0
            and not cleaned.get("confirm_zero")
        ):
            self.add_error("confirm_zero", "A limit of 0 needs this extra confirmation.")
        return cleaned
