"""The bad flag values of issue 33, and which verbs have each flag: what tests/test_cli_abuse.py checks and
bench/bad_input.py tabulates for the README."""

BAD_VALUES = [("-k", "0"), ("-n", "0"), ("-n", "-5"), ("-t", "0"), ("-t", "-1"), ("-t", "1000"), ("--temp", "-1"),
              ("--temp", "nan"), ("--temp", "inf"), ("--top-p", "2"), ("--top-p", "-0.5"), ("--top-k", "-5"),
              ("--min-p", "2"), ("-c", "-1"), ("--tree", "-1")]
ALL_FLAGS = {flag for flag, _ in BAD_VALUES}
# verb -> (the arguments it needs, the flags of BAD_VALUES it has)
VERBS = {"generate": (["-p", "Hi"], ALL_FLAGS), "chat": ([], ALL_FLAGS), "check": (["--limit", "1"], ALL_FLAGS),
         "bench": (["--no-peer"], {"-k", "-n", "-t", "-c", "--tree"}),
         "serve": (["--port", "0"], {"-k", "-t", "-c", "--tree"}),
         "demo": ([], {"-k", "-n", "-t"})}
