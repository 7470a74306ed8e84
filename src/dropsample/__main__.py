from dropsample.cli import main

main()
