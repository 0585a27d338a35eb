from cbir_lightning.cli import main

main()
