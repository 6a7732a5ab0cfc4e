install.packages('jsonlite')
