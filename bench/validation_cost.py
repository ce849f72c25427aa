"""What recipient validation costs per recipient, in process (issue 13's < 5% target).

The end-to-end benchmark (`relay_bench.py --systems relaywarden,relaywarden+validation,
relaywarden+hosted`) cannot resolve a few percent on a busy 2-core machine. This measures
the step itself, as the receiving process runs it for a recipient of a hosted domain with
a warm source: the settings for the domain, the answers that need no network (a file of
10,000 addresses, as in relay_bench.py), the verdict, and the mail log's `lookup` event,
formatted and written to a file as the log flusher does. Compare it with the relaywarden
CPU per message that relay_bench.py prints.

    .venv/bin/python bench/validation_cost.py [--recipients 100000]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from relaywarden.config.build import build_logs, build_resolver, build_validator
from relaywarden.config.load import load_config
from relaywarden.logs.maillog import MailEvent
from relaywarden.policy.recipients import combine

CONFIG = """
[relay]
hostname = "bench.test"
data_dir = "var"
hosted_domains = ["example.net"]

[recipients."example.net"]
files = ["recipients.txt"]

[listeners.bench]
address = "127.0.0.1"
port = 2525
"""


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--recipients", type=int, default=100_000)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="validation-cost-") as tmp:
        root = Path(tmp)
        (root / "recipients.txt").write_text(
            "".join(f"user{i}@example.net\n" for i in range(10_000)))
        (root / "relay.toml").write_text(CONFIG)
        cfg = load_config(root / "relay.toml")
        validator = build_validator(cfg, build_resolver(cfg))
        assert validator is not None
        mail_log, _ = build_logs(cfg)
        address = "user5000@example.net"

        def one_round() -> float:
            start = time.process_time()
            for _ in range(args.recipients):
                key, settings = validator.for_domain("example.net")
                answers = validator.answer_now(address, settings)
                assert answers is not None
                verdict = combine(key, answers, on_lookup_failure=settings.on_lookup_failure)
                assert verdict.action.name == "ACCEPT", verdict
                for a in answers:
                    mail_log.event(MailEvent.LOOKUP, kind="recipient", listener="bench",
                                   client="127.0.0.1", recipient=address, source=a.source,
                                   answer=a.known.value, cached="no", detail=None)
            mail_log.flush()
            return (time.process_time() - start) / args.recipients * 1e6

        rounds = sorted(one_round() for _ in range(args.rounds))
        mail_log.close()
    print(f"recipient validation (file of 10,000, warm), lookup + verdict + mail-log event: "
          f"{rounds[len(rounds) // 2]:.1f} us of CPU per recipient (median of {args.rounds}; "
          f"{', '.join(f'{r:.1f}' for r in rounds)})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
