"""`python -m segment_api.print_openapi`: the OpenAPI document segment-api serves, printed
without starting it (nothing is connected to). `make lint` checks it with Redocly."""

import json
import sys

from segment_api.main import create_app
from segment_api.settings import ApiSettings


def main() -> None:
    document = create_app(ApiSettings()).openapi()
    sys.stdout.write(json.dumps(document, indent=2) + "\n")


if __name__ == "__main__":
    main()
