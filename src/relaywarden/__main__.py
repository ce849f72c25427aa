from relaywarden.admin.cli import main

main()
