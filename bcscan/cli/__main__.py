from bcscan.cli.main import main

main()
