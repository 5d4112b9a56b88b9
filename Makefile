# The two entry points of the README. Both install what they need first (apt + pip; run as root).
.PHONY: demo test lint

demo:
	bash deploy/local/install.sh
	bash deploy/local/demo.sh

test:
	bash deploy/local/install.sh
	bash deploy/local/test.sh

lint:
	ruff check tuner tests benchmarks
	mypy tuner
	lint-imports --no-cache
