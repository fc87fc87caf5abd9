"""What a template's text needs before it can be sent: syntax problems and unresolved variables.

Both read the Jinja2 AST, never render. A variable counts as resolved when
it is a profile field (``USER_FIELDS``), a value Herald fills at send time
(``SYSTEM_VARIABLES``), provided by the campaign, or *guarded*: used only

    {{ x | default("...") }}            the default filter's input
    {% if x %}...{{ x }}...{% endif %}  in an if's test as a truth value, and in that if's body
    {{ x if x else "..." }}             likewise for inline ifs
    {% if x is defined %}               in a defined/undefined test

which is exactly when rendering without it cannot fail (see pipeline.content.engine:
an undefined variable is false in a test, and ``default`` replaces it).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from jinja2 import TemplateSyntaxError, meta, nodes

from pipeline.content.engine import ENVIRONMENTS
from pipeline.content.model import SYSTEM_VARIABLES, USER_FIELDS

_FORBIDDEN = {
    nodes.Extends: "extends",
    nodes.Include: "include",
    nodes.Import: "import",
    nodes.FromImport: "import",
}
_DEFINED_TESTS = frozenset({"defined", "undefined"})


def _parse(source: str) -> nodes.Template:
    return ENVIRONMENTS["text"].parse(source)


def template_syntax_problems(parts: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(part, reason) for every part that is not a valid template, e.g. ("body", "unexpected '}' at line 1")."""
    problems: list[tuple[str, str]] = []
    for part, source in parts.items():
        if not isinstance(source, str):
            continue
        try:
            tree = _parse(source)
            # compiling also checks that every filter and test exists
            ENVIRONMENTS["text"].compile(tree)
        except TemplateSyntaxError as exc:
            problems.append((part, f"{exc.message} at line {exc.lineno}"))
            continue
        for node_type, what in _FORBIDDEN.items():
            for node in tree.find_all(node_type):
                problems.append((part, f"templates cannot {what} other templates (line {node.lineno})"))
    return problems


def _root_name(node: nodes.Node) -> str | None:
    """``x`` for ``x``, ``x.a``, ``x["a"].b``: the variable an attribute chain starts from."""
    while isinstance(node, (nodes.Getattr, nodes.Getitem)):
        node = node.node
    return node.name if isinstance(node, nodes.Name) else None


def _chain_keys(node: nodes.Node, guarded: frozenset[str], found: set[str]) -> None:
    """The names read by item keys of a chain (``y`` in ``x[y]``); the root is the caller's business."""
    while isinstance(node, (nodes.Getattr, nodes.Getitem)):
        if isinstance(node, nodes.Getitem):
            _unguarded(node.arg, guarded, found)
        node = node.node


def _true_in_body(test: nodes.Node) -> set[str]:
    """Root names certainly defined when ``test`` is true: x, x.y, x and y, x is defined; both sides of an or."""
    if _root_name(test) is not None:
        return {_root_name(test)}  # type: ignore[arg-type]
    if isinstance(test, nodes.And):
        return _true_in_body(test.left) | _true_in_body(test.right)
    if isinstance(test, nodes.Or):
        return _true_in_body(test.left) & _true_in_body(test.right)
    if isinstance(test, nodes.Test) and test.name == "defined" and _root_name(test.node) is not None:
        return {_root_name(test.node)}  # type: ignore[arg-type]
    return set()


def _test(test: nodes.Node, guarded: frozenset[str], found: set[str]) -> None:
    """Names used as truth values in a test are safe (undefined is false); comparisons and filters read them."""
    if _root_name(test) is not None:
        _chain_keys(test, guarded, found)
    elif isinstance(test, nodes.Not):
        _test(test.node, guarded, found)
    elif isinstance(test, (nodes.And, nodes.Or)):
        _test(test.left, guarded, found)
        # in "a and b", b is only evaluated when a is true
        right_guard = guarded | frozenset(_true_in_body(test.left)) if isinstance(test, nodes.And) else guarded
        _test(test.right, right_guard, found)
    else:
        _unguarded(test, guarded, found)


def _unguarded(node: nodes.Node, guarded: frozenset[str], found: set[str]) -> None:
    """Add to ``found`` every name read outside a guard."""
    if isinstance(node, nodes.Name):
        if node.ctx == "load" and node.name not in guarded:
            found.add(node.name)
    elif isinstance(node, nodes.Filter) and node.name == "default" and node.node is not None:
        if _root_name(node.node) is not None:
            _chain_keys(node.node, guarded, found)
        else:
            _unguarded(node.node, guarded, found)
        for child in [*node.args, *(kw.value for kw in node.kwargs)]:
            _unguarded(child, guarded, found)
    elif isinstance(node, nodes.Test) and node.name in _DEFINED_TESTS and _root_name(node.node) is not None:
        _chain_keys(node.node, guarded, found)
    elif isinstance(node, (nodes.If, nodes.CondExpr)):
        _test(node.test, guarded, found)
        inside = guarded | frozenset(_true_in_body(node.test))
        body = node.body if isinstance(node, nodes.If) else [node.expr1]
        rest = [*node.elif_, *node.else_] if isinstance(node, nodes.If) else [node.expr2] if node.expr2 else []
        for child in body:
            _unguarded(child, inside, found)
        for child in rest:
            _unguarded(child, guarded, found)
    else:
        for child in node.iter_child_nodes():
            _unguarded(child, guarded, found)


def variables_used(parts: Mapping[str, Any]) -> set[str]:
    """Every root variable the parts read (guarded or not) and do not define themselves."""
    used: set[str] = set()
    for source in parts.values():
        if isinstance(source, str):
            try:
                used |= meta.find_undeclared_variables(_parse(source))
            except TemplateSyntaxError:
                continue
    return used


def unresolved_variables(parts: Mapping[str, Any], provided: Mapping[str, Any] | Iterable[str]) -> list[str]:
    """Root variables the parts need that nobody fills: not profile fields, not provided, not guarded; sorted."""
    known = USER_FIELDS | SYSTEM_VARIABLES | set(provided)
    needed: set[str] = set()
    for source in parts.values():
        if not isinstance(source, str):
            continue
        try:
            tree = _parse(source)
        except TemplateSyntaxError:
            continue
        found: set[str] = set()
        _unguarded(tree, frozenset(), found)
        needed |= found & meta.find_undeclared_variables(tree)
    return sorted(needed - known)


def campaign_variables(parts: Mapping[str, Any]) -> list[str]:
    """Variables a campaign may fill (everything read that is not a profile or system field); sorted."""
    return sorted(variables_used(parts) - USER_FIELDS - SYSTEM_VARIABLES)
