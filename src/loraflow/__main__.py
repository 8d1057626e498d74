"""`python -m loraflow`: the same CLI as the `loraflow` script."""

from loraflow.cli import main

if __name__ == "__main__":
    main()
