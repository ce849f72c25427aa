"""The server core's transition table (issue 17.4, h11's rule): the state changes in one place.

`_TRANSITIONS` says which cause may change the state to what in each state, `_switch()` is
the only code that assigns `state`, and what a cause does besides is named in `_EFFECTS`.
"""

import ast
import inspect
from pathlib import Path

import pytest
from smtpcore_helpers import GREETING, Driver, open_transaction, settings

import relaywarden.smtp as smtp_package
from relaywarden.smtp import server
from relaywarden.smtp.events import DECISION_EVENTS, Atrn, AuthResponse, DataEnd
from relaywarden.smtp.server import (
    _ANSWERS,
    _EFFECTS,
    _TABLE,
    _TRANSITIONS,
    _VALID_IN,
    Cause,
    ServerConnection,
    ServerState,
    UsageError,
)

SMTP_DIR = Path(smtp_package.__file__).parent


def _state_assignments(tree: ast.AST) -> list[tuple[str, int]]:
    """(enclosing function, line) of every assignment to an attribute named `state`, and of
    every setattr(..., "state", ...)."""
    found: list[tuple[str, int]] = []

    def visit(node: ast.AST, function: str) -> None:
        for child in ast.iter_child_nodes(node):
            name = function
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                name = child.name
            targets: list[ast.expr] = []
            if isinstance(child, ast.Assign):
                targets = child.targets
            elif isinstance(child, (ast.AugAssign, ast.AnnAssign)):
                targets = [child.target]
            elif isinstance(child, (ast.For, ast.AsyncFor, ast.With, ast.AsyncWith)):
                targets = ([child.target] if isinstance(child, (ast.For, ast.AsyncFor))
                           else [i.optional_vars for i in child.items if i.optional_vars])
            for target in targets:
                for sub in ast.walk(target):
                    if isinstance(sub, ast.Attribute) and sub.attr == "state":
                        found.append((name, sub.lineno))
            if (isinstance(child, ast.Call) and isinstance(child.func, ast.Name)
                    and child.func.id == "setattr" and len(child.args) > 1
                    and isinstance(child.args[1], ast.Constant)
                    and child.args[1].value == "state"):
                found.append((name, child.lineno))
            visit(child, name)

    visit(tree, "<module>")
    return found


def test_the_state_is_assigned_only_by_switch():
    """h11's rule: __init__ sets the initial state, _switch() every later one. Nothing else
    in the server core (server.py and the modules it is split into) assigns it."""
    found = {}
    for path in sorted(SMTP_DIR.glob("*.py")):
        if path.name == "client.py":
            continue                         # the client side has no ServerState
        found[path.name] = _state_assignments(ast.parse(path.read_text(), str(path)))
    server_found = found.pop("server.py")
    assert [name for name, _ in server_found] == ["__init__", "_switch"], server_found
    assert not any(found.values()), found


def test_the_initial_state_is_connected():
    init = ast.parse(inspect.getsource(ServerConnection.__init__).strip())
    [assign] = [n for n in ast.walk(init) if isinstance(n, ast.Assign)
                and any(isinstance(t, ast.Attribute) and t.attr == "state" for t in n.targets)]
    assert ast.unparse(assign.value) == "ServerState.CONNECTED"


def test_the_assignment_scanner_sees_what_it_must():
    source = """
def f(self):
    self.state = 1
    self.x.state += 1
    a, self.state = 1, 2
    setattr(self, "state", 3)
    self.other = 4
"""
    assert [line for _, line in _state_assignments(ast.parse(source))] == [3, 4, 5, 6]


def test_every_state_has_a_row_and_every_cause_is_used():
    assert set(_TRANSITIONS) == set(ServerState)
    used = {cause for row in _TRANSITIONS.values() for cause in row}
    assert used == set(Cause)
    assert _TRANSITIONS[ServerState.CLOSED] == {}
    assert _TRANSITIONS[ServerState.REVERSED] == {}


def test_every_state_but_the_last_two_can_close():
    for state, row in _TRANSITIONS.items():
        if state in (ServerState.CLOSED, ServerState.REVERSED):
            continue
        assert row.get(Cause.CLOSE) is ServerState.CLOSED, state


def test_the_compiled_table_is_the_table_with_its_effects():
    for state, row in _TRANSITIONS.items():
        assert set(_TABLE[state]) == set(row)
        for cause, new in row.items():
            compiled_new, effect = _TABLE[state][cause]
            assert compiled_new is new
            expected = getattr(ServerConnection, _EFFECTS[cause]) if cause in _EFFECTS else None
            assert effect is expected


def test_effects_never_switch():
    """An effect runs inside _switch(): switching from it would be a second, nested state
    change that the table never sees as one."""
    checked = set()
    todo = set(_EFFECTS.values())
    while todo:
        name = todo.pop()
        checked.add(name)
        tree = ast.parse(inspect.getsource(getattr(ServerConnection, name)).strip())
        for node in ast.walk(tree):
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                    and node.value.id == "self"):
                assert node.attr != "_switch", f"{name} calls _switch"
                if callable(getattr(ServerConnection, node.attr, None)) \
                        and node.attr not in checked:
                    todo.add(node.attr)
    assert "_reset_transaction" in checked


# The states in which each decision event can be pending: where its command is valid
# (_VALID_IN), or, for the two that are not commands, where their input is read.
PENDING_IN = {
    DataEnd: {ServerState.DATA},
    AuthResponse: {ServerState.AUTH},
}
COMMAND = {"Hello": "EHLO", "MailFrom": "MAIL", "RcptTo": "RCPT", "DataStart": "DATA",
           "StartTls": "STARTTLS", "Auth": "AUTH", "Etrn": "ETRN", "Atrn": "ATRN"}


@pytest.mark.parametrize("kind", DECISION_EVENTS, ids=lambda k: k.__name__)
def test_every_answer_to_a_decision_is_in_the_table(kind):
    """Whatever the driver answers (_ANSWERS) in a state where the decision can be
    pending, the table has a transition for it: respond() never raises for a valid
    answer."""
    states = PENDING_IN.get(kind) or _VALID_IN[COMMAND[kind.__name__]]
    _, refused, accepted = _ANSWERS[kind]
    for state in states:
        assert refused in _TRANSITIONS[state], (kind, state, refused)
        assert accepted in _TRANSITIONS[state], (kind, state, accepted)


def test_only_atrn_turns_the_connection_round():
    into_reversed = [(state, cause) for state, row in _TRANSITIONS.items()
                     for cause, new in row.items() if new is ServerState.REVERSED]
    assert into_reversed == [(ServerState.READY, Cause.ATRN)]
    assert _ANSWERS[Atrn][2] is Cause.ATRN


def test_a_cause_outside_the_table_is_a_usage_error_and_changes_nothing():
    d = Driver(settings())
    open_transaction(d)
    conn = d.conn
    before = (conn.state, conn._mail, conn._rcpt_accepted, bytes(conn._in))
    with pytest.raises(UsageError, match="TLS_STARTED .* not possible in state RCPT"):
        conn._switch(Cause.TLS_STARTED)
    assert (conn.state, conn._mail, conn._rcpt_accepted, bytes(conn._in)) == before


def test_closed_is_final():
    conn = ServerConnection(settings())
    conn.greet(GREETING)
    conn.receive_data(b"QUIT\r\n")
    conn.next_event()
    assert conn.state is ServerState.CLOSED
    for cause in Cause:
        with pytest.raises(UsageError):
            conn._switch(cause)
    assert conn.state is ServerState.CLOSED


def test_rset_keeps_the_state_before_ehlo_and_ends_a_transaction():
    d = Driver(settings())
    d.send(b"RSET\r\n")
    assert d.conn.state is ServerState.GREETED
    open_transaction(d)
    assert d.conn.state is ServerState.RCPT
    d.send(b"RSET\r\n")
    assert d.conn.state is ServerState.READY
    assert d.conn._mail is None and d.conn._rcpt_accepted == 0


def test_server_module_docstring_names_the_table():
    assert "_TRANSITIONS" in (server.__doc__ or "")
