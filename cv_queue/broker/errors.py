"""The one error type the local-broker tooling raises: a problem plus what to do about it."""


class BrokerError(RuntimeError):
    """A local-broker problem the user can act on; `hint` says how."""

    def __init__(self, problem: str, hint: str = "") -> None:
        self.problem = problem
        self.hint = hint
        super().__init__(f"{problem}\n  hint: {hint}" if hint else problem)
