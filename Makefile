# The two commands of the README. Each does all set-up itself (scripts/bootstrap.sh) and is safe to re-run.
.PHONY: demo test

demo:
	scripts/bootstrap.sh run
	.venv/bin/pyorthrus demo

test:
	scripts/bootstrap.sh dev
	.venv/bin/python -m pytest
