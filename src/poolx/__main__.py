from poolx.cli import main

main()
