from bulwark.cli.main import main

main()
