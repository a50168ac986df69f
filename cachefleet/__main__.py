from cachefleet.cli import main

main()
