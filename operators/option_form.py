"""The propagation settings as operator form inputs, derived from their declaration
(:mod:`deaot_vos.propagation.option_specs`): one input per setting the form shows, in field
order, with its label, help, default, lower bound and choices. The params are checked by building
the options from them once; when that fails, each value alone, to show the error on its input."""
from __future__ import annotations

from typing import Callable, Optional

import fiftyone.operators.types as types

from deaot_vos.propagation import PropagationOptions
from deaot_vos.propagation.option_specs import OptionSpec, option_specs

#: ``widget(inputs, spec) -> Property``: declares one setting's input in place of :func:`option_input`
Widget = Callable[[types.Object, OptionSpec], types.Property]
#: ``hook(props, options)``: runs right after a setting's input (``props``: the inputs declared so
#: far; ``options``: what the params make, None when a value is bad)
Hook = Callable[[dict, Optional[PropagationOptions]], None]


def description(spec: OptionSpec) -> str:
    """The setting's help as the form shows it (capitalised)."""
    text = spec.info.help
    return text[:1].upper() + text[1:]


def option_input(inputs: types.Object, spec: OptionSpec, help_text: Optional[str] = None) -> types.Property:
    """Declare ``spec``'s input on ``inputs``: a radio group for choices, a checkbox, a number
    (with its lower bound) or a text; ``help_text`` replaces the declared help."""
    texts = dict(label=spec.info.label, description=help_text or description(spec))
    default = spec.as_param(spec.form_default)
    given = {} if default is None else dict(default=default)
    if spec.info.choices:
        radio = types.RadioGroup()
        for value, label in spec.choice_labels.items():
            radio.add_choice(value, label=label)
        return inputs.enum(spec.name, radio.values(), required=spec.info.required, view=radio, **given, **texts)
    if spec.kind == "bool":
        return inputs.bool(spec.name, default=bool(default), **texts)
    if spec.kind in ("int", "float"):
        declare = inputs.int if spec.kind == "int" else inputs.float
        return declare(spec.name, required=spec.info.required, min=spec.info.minimum, **given, **texts)
    return inputs.str(spec.name, required=spec.info.required, **given, **texts)


def checked_options(params: dict, options_cls=PropagationOptions):
    """(options, errors): the options built from the form's ``params``, or, when that fails, None
    and setting -> the error that building them from its value alone raises."""
    try:
        return options_cls.from_params(params), {}
    except (TypeError, ValueError):
        pass
    errors = {}
    for spec in option_specs(options_cls):
        value = params.get(spec.name)
        if value is None or (isinstance(value, str) and not value.strip()):
            continue
        try:
            options_cls.from_params({spec.name: value})
        except (TypeError, ValueError) as err:
            errors[spec.name] = str(err)
    return None, errors


def option_inputs(ctx, inputs: types.Object, widgets: Optional[dict[str, Widget]] = None,
                  after: Optional[dict[str, Hook]] = None, options_cls=PropagationOptions) -> dict[str, types.Property]:
    """Declare every setting of ``options_cls`` that the form shows, in field order, each with
    the error its value raises (``widgets``: setting -> its own input; ``after``: setting -> a
    hook run right after its input, given the inputs so far and the options the params make, or
    None when they make none); returns setting -> its property."""
    widgets, after = widgets or {}, after or {}
    options, errors = checked_options(ctx.params, options_cls)
    props: dict[str, types.Property] = {}
    for spec in option_specs(options_cls):
        if not spec.shown_in("form"):
            continue
        widget = widgets.get(spec.name)
        prop = props[spec.name] = widget(inputs, spec) if widget else option_input(inputs, spec)
        if spec.name in errors:
            prop.invalid, prop.error_message = True, errors[spec.name]
        if spec.name in after:
            after[spec.name](props, options)
    return props
