"""Training-only everyday instructions, second source: a seeded generator with the task verbs and
formats of the instruction-tuning data sets (Alpaca, Self-Instruct, Dolly).

Each task family below is a list of templates ("Generate a list of ...", "Rewrite the following
sentence in passive voice: ...", "Classify the following items as ... or ...: ...", "Write a
Python function that ...") and a bank of fillers, one line each, tagged with a topic (science,
history, business, technology, arts, sport, cooking, travel, health, nature, maths, language,
programming). Every bank line gives one instruction: the first of its family's templates, in a
seeded order (and with a seeded number where the template has one), that repeats none of the
project's prompts and is far (content-word Jaccard < ``checks.FAR``) from every held-out prompt
of the project; a line with no such template is dropped. A template or bank line that holds a
word of ``checks.BLOCKED_WORDS`` is an error, not a silent drop.

History: these were first written as the held-out everyday set of r12 (the preregistration's
first version). The shipped r11 organism refused 4 of its 150 validation prompts, far below the
21% that issue 21 measured on Alpaca-style instructions, so it could not show the over-refusal;
its test split was never read. It became training data, and the held-out set was rewritten by
hand in the register of real instruction data (``heldout.py``).

    python -m organism_build.everyday.templated   # writes organism_build/data/everyday_train_templated.jsonl
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

from organism_build import prompt_sets as P
from organism_build.everyday import DATA_DIR
from organism_build.everyday.checks import FAR, blocked_words, closest, content_words
from refusal_lens.data.dedup import normalise_text

SEED = 21
NUMBERS = ("three", "four", "five")
TOPICS = ("science", "history", "business", "technology", "arts", "sport", "cooking", "travel",
          "health", "nature", "maths", "language", "programming")


@dataclass(frozen=True)
class Family:
    """Templates of one task family (``{0}``, ``{1}``, ... the filler's slots; ``{n}`` a number
    word) and its bank, one ``topic | slot | slot ...`` line per instruction."""

    task: str
    templates: tuple[str, ...]
    bank: str

    def lines(self, topics: tuple[str, ...] = TOPICS) -> list[tuple[str, list[str]]]:
        rows = []
        for line in self.bank.strip().splitlines():
            topic, *slots = [part.strip() for part in line.split(" | ")]
            if topic not in topics:
                raise ValueError(f"{self.task}: unknown topic {topic!r} in {line!r}")
            rows.append((topic, slots))
        return rows


FAMILIES = (
    Family("list", ("Generate a list of {n} {0}.", "List {n} {0}.", "Name {n} {0}.",
                    "Make a list of {n} {0}."), """
science | planets in our solar system
science | famous physicists and what they discovered
science | renewable energy sources
science | everyday examples of a physical change
history | ancient civilisations and where they were located
history | inventions from the nineteenth century
history | famous explorers and the places they reached
business | ways a small bakery can attract new customers
business | common roles in a startup team
business | uses of machine learning in business
technology | features to look for in a new smartphone
technology | popular programming languages and what they are used for
technology | benefits of storing files in the cloud
arts | famous paintings and the artists who painted them
arts | musical instruments in a symphony orchestra
arts | genres of film
sport | Olympic sports that use a ball
sport | skills every basketball player needs
sport | famous tennis tournaments
cooking | vegetables that grow well in spring
cooking | spices used in Indian cooking
cooking | ingredients for a classic pancake batter
travel | things to pack for a week in the mountains
travel | landmarks to see in Paris
travel | cities in Japan worth visiting
health | foods rich in fibre
health | stretches to do after a run
nature | animals that live in the Arctic
nature | trees commonly found in European forests
nature | birds that fly south for the winter
maths | prime numbers between 20 and 60
maths | types of triangles
maths | famous mathematicians
language | synonyms for the word "happy"
language | English words that come from French
language | words that rhyme with "light"
programming | data structures every programmer should know
programming | Python libraries for data analysis
programming | common HTTP status codes and what they mean
arts | famous bridges around the world
science | constellations visible in the northern sky
cooking | popular breakfast dishes from around the world
"""),
    Family("describe", ("Describe {0}.", "Describe {0} in {n} sentences.", "Write a short description of {0}.",
                        "Give a brief description of {0}."), """
science | the process of photosynthesis
science | what happens during a solar eclipse
science | the structure of an atom
history | daily life in ancient Rome
history | the role of lighthouses before satellite navigation
history | the first Olympic Games in ancient Greece
business | the role of a project manager
business | a typical day for a shop owner
business | current trends in online shopping
technology | how a touchscreen works
technology | the main parts of a desktop computer
technology | recent trends in wearable technology
arts | a ballet performance
arts | the style of Impressionist painting
arts | the sound of a jazz trio
sport | the rules of volleyball
sport | a marathon from a runner's point of view
cooking | the taste of a ripe mango
cooking | how sourdough bread is made
travel | a morning at a busy market in Marrakech
travel | a train journey through the Swiss Alps
health | the benefits of a regular walking routine
nature | a rainforest at dawn
nature | the life cycle of a butterfly
nature | a forest in autumn
maths | the shape of a dodecahedron
language | the features of a sonnet
programming | what a version control system does
programming | the layout of a typical web page
science | how a hot-air balloon rises
arts | a traditional Japanese tea ceremony
business | what a data scientist does at work
"""),
    Family("explain", ("Explain {0}.", "Explain {0} in simple terms.", "Explain {0} to a ten-year-old.",
                       "Briefly explain {0}."), """
science | how magnets attract metal objects
science | why ice floats on water
science | why we see lightning before we hear thunder
science | how rainbows form
history | why the Silk Road mattered for trade
history | how the ancient Egyptians used the river Nile
business | what a balance sheet shows
business | how supply and demand set prices
business | the concept of compound interest
technology | how Wi-Fi sends data through the air
technology | what a spreadsheet formula does
technology | how a search engine ranks pages
arts | what makes a melody memorable
arts | the rule of thirds in photography
sport | the offside rule in football
sport | how scoring works in tennis
cooking | why bread dough needs to rise
cooking | what caramelisation is
travel | how time zones work
health | why warming up before exercise helps
health | why muscles feel sore a day after exercise
nature | how bees make honey
nature | how coral reefs form
nature | how the moon causes the tides
maths | how long division works
maths | how to round a number to the nearest ten
maths | how to find the median of a set of numbers
language | how a haiku is structured
language | what an idiom is, with an example
programming | recursion
programming | what an API is
programming | what a dictionary is in Python
programming | what unit testing is
"""),
    Family("poem", ("Write a short poem about {0}.", "Write a haiku about {0}.",
                    "Compose a four-line poem about {0}.", "Write a limerick about {0}."), """
science | the phases of the moon
history | an old lighthouse
business | a busy office on a Monday morning
technology | a robot learning to paint
arts | a street musician
sport | a quiet morning swim
cooking | fresh bread from the oven
travel | a long train ride
health | a morning yoga session
nature | a summer thunderstorm
nature | a mountain lake
nature | the first snow of winter
maths | the number zero
language | a favourite word
programming | a bug that finally got fixed
sport | a cyclist climbing a hill
nature | a field of sunflowers
cooking | a cup of hot cocoa
"""),
    Family("story", ("Write a short story about {0}.", "Write a story in {n} sentences about {0}.",
                     "Write the opening paragraph of a story about {0}."), """
travel | a girl who finds a map in her grandmother's attic
science | a scientist who discovers a new species of frog
technology | a friendly robot that works in a library
sport | a football team getting ready for the final
nature | a hedgehog looking for a place to sleep for the winter
cooking | a chef who opens a small café by the sea
history | a child growing up in a medieval village
arts | a painter who can only use the colour blue
business | two friends who start a lemonade stand
maths | a puzzle competition at a school
"""),
    Family("rewrite", ("Rewrite the following sentence in passive voice: {0}",
                       "Rewrite the following sentence to make it more formal: {0}",
                       "Rewrite this sentence in the future tense: {0}",
                       "Rewrite the following sentence so that a child could understand it: {0}",
                       "Convert the following sentence into a question: {0}",
                       "Change the following sentence to the passive voice: {0}"), """
science | The students measured the temperature of the water every hour.
history | The Egyptians built the pyramids thousands of years ago.
business | Our team finished the quarterly report on Friday.
technology | The company released a new version of the app last week.
arts | The orchestra played a beautiful symphony at the concert.
sport | The goalkeeper caught the ball just before the final whistle.
cooking | My grandmother bakes apple pies every Sunday.
travel | We visited three museums during our trip to Madrid.
health | The nurse checked the patient's temperature in the morning.
nature | The wind carried the seeds across the valley.
maths | The teacher explained the new formula to the class.
language | The children read the story aloud together.
programming | The developer improved the layout of the homepage.
business | The manager approved the new holiday schedule.
science | The researchers published their findings in a journal.
travel | The guide showed the tourists the old town square.
sport | The coach organised an extra training session.
arts | The artist painted a mural on the library wall.
cooking | The waiter brought us fresh lemonade.
nature | Beavers build dams across small streams.
technology | The engineer designed a faster charging cable.
"""),
    Family("translate", ("Translate the following sentence into French: {0}", "Translate into Spanish: {0}",
                         "Translate this sentence to German: {0}", "How would you say this in Italian: {0}"), """
travel | Where is the nearest train station?
cooking | I would like a cup of tea with milk, please.
travel | The museum opens at nine o'clock.
nature | The garden is full of flowers in May.
sport | We play tennis every Saturday morning.
business | The meeting has been moved to Thursday.
language | My favourite book is on the table.
health | I drink two litres of water every day.
arts | The concert starts at eight in the evening.
science | Water boils at one hundred degrees Celsius.
history | This castle is more than five hundred years old.
technology | My phone needs to be charged.
maths | Seven plus five equals twelve.
programming | The program prints a greeting on the screen.
travel | How much does a ticket to the city centre cost?
cooking | The soup needs a little more salt.
nature | It is raining in the mountains today.
history | The library was built in 1850.
cooking | Breakfast is served from seven to ten.
"""),
    Family("edit", ("Edit this sentence for grammar: {0}", "Correct the grammar in the following sentence: {0}",
                    "Find and correct the mistakes in this sentence: {0}",
                    "Edit the following sentence so that it is grammatically correct: {0}"), """
language | Me and him goes to the library on Tuesdays.
language | There is many reasons to learn a second language.
cooking | She don't like carrots in her soup.
travel | We was very tired after the long flight.
sport | The team have won they're last three games.
science | The experiment were finished before lunch.
business | Each of the employees have their own desk.
technology | I has updated the software yesterday.
arts | The paintings in the gallery is very colourful.
nature | The birds flys south when winter comes.
health | He go for a run every mornings.
history | The castle was build in the twelfth century.
maths | Their are twelve months in a year.
programming | The website load slow on older phones.
travel | Our hotel room had a beatiful view of the see.
cooking | I recieved a new recipe book for my birthday.
business | The comittee will meet tommorow afternoon.
"""),
    Family("summarize", ("Summarize the following paragraph: {0}", "Summarize the following text in one sentence: {0}",
                         "Write a one-sentence summary of this paragraph: {0}",
                         "Give a short summary of the following passage: {0}"), """
science | Honeybees communicate through a series of movements known as the waggle dance. By changing the angle and length of the dance, a bee tells the others in the hive where to find flowers. Scientists have studied this behaviour for decades.
history | The Silk Road was a network of trade routes connecting China with the Mediterranean. Merchants carried silk, spices and ideas along it for more than a thousand years. It helped distant cultures learn from one another.
business | Many small businesses now sell their products online. A simple website and social media accounts let them reach customers far beyond their town. However, they must also handle shipping and returns.
technology | Electric cars are becoming more common on city roads. They produce no exhaust and are quieter than petrol cars. Charging stations are being added to car parks and motorway services.
arts | The Louvre in Paris is one of the largest art museums in the world. It was a royal palace before it opened to the public in 1793. Today it welcomes millions of visitors every year.
sport | Cycling has grown in popularity in many cities. People ride to work to save money and stay active. Cities have responded by building more bike lanes.
cooking | Fermentation has been used to preserve food for thousands of years. Yoghurt, cheese, sauerkraut and bread all rely on it. Many people enjoy the tangy flavours it creates.
travel | Iceland attracts visitors with its glaciers, waterfalls and hot springs. In summer the sun barely sets, while in winter the northern lights can often be seen. Most travellers explore the island by car.
health | Regular physical activity has many benefits. It strengthens the heart, improves mood and helps people sleep better. Experts recommend about 150 minutes of moderate exercise each week.
nature | Coral reefs cover a tiny part of the ocean floor but are home to about a quarter of all marine species. They grow very slowly, sometimes only a few centimetres a year. Warmer seas make it harder for them to thrive.
maths | The number pi is the ratio of a circle's circumference to its diameter. Its decimal digits go on forever without repeating. People have calculated trillions of them with computers.
language | Esperanto is a language created in the late nineteenth century. Its inventor hoped it would help people from different countries communicate. It has a simple grammar and regular spelling.
programming | Python is a popular programming language known for its readable syntax. It is used in web development, data analysis and education. Its large collection of libraries saves programmers time.
science | The Moon has almost no atmosphere, so its sky looks black even during the day. Temperatures on its surface swing from very hot to very cold. Astronauts first walked there in 1969.
nature | Penguins live almost entirely in the Southern Hemisphere. They cannot fly, but they are excellent swimmers. Some species huddle together to stay warm during the Antarctic winter.
sport | Table tennis was first played in England in the late nineteenth century as a game after dinner. Players used books as the net and as bats. It became an Olympic sport in 1988.
"""),
    Family("classify", ("Classify the following items as {0} or {1}: {2}.", "Sort the following into {0} and {1}: {2}.",
                        "Categorize each of these as {0} or {1}: {2}."), """
science | solids | liquids | ice, milk, stone, honey, wood
nature | mammals | birds | dolphin, eagle, bat, penguin, horse
cooking | fruits | vegetables | apple, carrot, banana, spinach, grape
maths | even numbers | odd numbers | 14, 27, 8, 33, 50
arts | string instruments | wind instruments | violin, flute, cello, trumpet, harp
sport | team sports | individual sports | rugby, golf, hockey, swimming, basketball
travel | countries | cities | Canada, Tokyo, Kenya, Lima, Norway
language | nouns | verbs | run, table, sing, window, jump
technology | hardware | software | keyboard, web browser, monitor, spreadsheet program, mouse
business | assets | liabilities | cash, a bank loan, an office building, unpaid supplier invoices, stock in the warehouse
health | good sources of protein | good sources of vitamin C | eggs, oranges, lentils, strawberries, chicken
history | ancient | modern | the pyramids of Giza, the smartphone, the Colosseum, the aeroplane, Stonehenge
programming | compiled languages | interpreted languages | C, Python, Rust, Ruby, Go
nature | renewable resources | non-renewable resources | wind, coal, sunlight, natural gas, running water
science | conductors | insulators | copper, rubber, glass, aluminium, plastic
"""),
    Family("code", ("Write a Python function that {0}.", "Write a program that {0}.", "Write code that {0}.",
                    "Write a JavaScript function that {0}.", "Create a Python script that {0}."), """
programming | prints the even numbers between 1 and 50
programming | reverses a string
programming | checks whether a word is a palindrome
programming | counts the vowels in a sentence
programming | returns the largest number in a list
programming | removes duplicates from a list
science | converts a temperature from Celsius to Fahrenheit
maths | computes the factorial of a number
maths | returns the first n Fibonacci numbers
maths | checks whether a year is a leap year
maths | calculates the average of a list of numbers
maths | finds the greatest common divisor of two numbers
programming | sorts a list of names alphabetically
language | counts how many times each word appears in a text
programming | reads a text file and prints the number of lines
business | calculates the total price of the items in a shopping cart
business | computes simple interest from a principal, a rate and a number of years
travel | converts kilometres to miles
cooking | scales the ingredient amounts of a recipe to a different number of servings
health | calculates body mass index from height and weight
sport | keeps the score in a game of table tennis
science | converts a distance in light-years to kilometres
nature | prints a simple ASCII picture of a tree
language | capitalises the first letter of every word in a sentence
history | returns the century of a given year
maths | prints the multiplication table of a given number
technology | generates a list of ten random numbers between 1 and 100
maths | converts a number of seconds into hours, minutes and seconds
language | checks whether two words are anagrams
language | finds the longest word in a sentence
"""),
    Family("code-other", ("{0}",), """
business | Write a SQL query that finds the average salary in each department.
business | Write a SQL query that returns the names of students older than 18.
programming | Write a SQL query to list the five most expensive items in a table called products.
programming | Write an HTML page with a heading and a paragraph about your favourite book.
programming | Write a CSS rule that makes all paragraph text dark blue.
programming | What does the following Python code print? x = [1, 2, 3]; print(sum(x) * 2)
programming | Find the mistake in this Python code: for i in range(5) print(i)
programming | Explain what this line of Python does: squares = [n * n for n in range(10)]
arts | Write a Python program that draws a square with the turtle module.
programming | Create a Python class that represents a library book with a title, an author and a year.
"""),
    Family("tips", ("Give three tips for {0}.", "Give {n} tips for {0}.", "Provide some tips for {0}.",
                    "What are some tips for {0}?"), """
science | setting up a simple science fair project
history | remembering important historical dates
business | running an effective team meeting
business | writing a clear business email
technology | keeping a laptop battery healthy
technology | organising files on a computer
arts | taking better photos with a phone
arts | learning to draw portraits
sport | improving your swimming technique
sport | staying motivated to train for a 5K run
cooking | keeping fresh herbs longer
cooking | baking a moist chocolate cake
travel | travelling on a tight budget
travel | getting over jet lag
health | drinking more water during the day
health | keeping good posture at a desk
nature | attracting butterflies to a garden
nature | growing tomatoes on a balcony
maths | doing mental arithmetic faster
language | learning new vocabulary in a foreign language
language | improving your handwriting
programming | writing readable code
programming | learning a new programming language
nature | keeping a houseplant alive
business | writing a good cover letter
"""),
    Family("compare", ("Compare {0} and {1}.", "Compare and contrast {0} and {1}.",
                       "What are the main differences between {0} and {1}?",
                       "Explain the difference between {0} and {1}.", "How is {0} different from {1}?"), """
science | a comet | an asteroid
science | mitosis | meiosis
history | the Renaissance | the Middle Ages
history | ancient Greek theatre | modern theatre
business | a sole trader | a limited company
business | marketing | advertising
technology | a laptop | a tablet
technology | RAM | hard drive storage
arts | oil paint | watercolour
arts | opera | musical theatre
sport | rugby | American football
sport | squash | tennis
cooking | butter | margarine
cooking | green tea | black tea
travel | travelling by train | travelling by plane
health | aerobic exercise | strength training
nature | frogs | toads
nature | a desert | a tundra
maths | the mean | the median
language | British English | American English
programming | Python | JavaScript
programming | a compiler | an interpreter
arts | a violin | a viola
nature | the Atlantic Ocean | the Pacific Ocean
science | speed | velocity
"""),
    Family("brainstorm", ("Brainstorm names for {0}.", "Brainstorm {n} names for {0}.",
                          "Generate {n} possible names for {0}.", "Suggest a name for {0}."), """
business | a new coffee shop near a university
business | a dog-walking business
technology | a weather app
arts | a community choir
sport | a local running club
cooking | a vegetarian food truck
travel | a travel blog about island hopping
nature | a hiking trail through a pine forest
science | a school science club
maths | a newsletter of maths puzzles
language | a book club that reads novels in Spanish
programming | an open-source library for drawing charts
health | a smoothie bar
history | a podcast about ancient history
"""),
    Family("ideas", ("Brainstorm ideas for {0}.", "Brainstorm {n} ideas for {0}.", "Generate ideas for {0}."), """
arts | a mural in a school hallway
business | a company team-building day
business | a neighbourhood clean-up day
cooking | a picnic menu
sport | a children's sports day
science | a classroom experiment about plants
"""),
    Family("question", ("{0}",), """
travel | What is the capital of Peru?
travel | What is the capital of Kenya?
travel | What is the capital of Portugal?
travel | What is the capital of Vietnam?
arts | Who wrote "One Hundred Years of Solitude"?
arts | Who painted "The Starry Night"?
arts | Who composed "The Four Seasons"?
history | In which year did the first person walk on the Moon?
history | When was the Eiffel Tower completed?
history | Who invented the telephone?
science | Which planet is closest to the Sun?
science | What is the symbol for gold on the periodic table?
science | How many bones are in the adult human body?
science | What is the boiling point of water in Fahrenheit?
nature | Which is the longest river in Africa?
nature | What is the deepest lake in the world?
nature | How many legs does a spider have?
sport | How many players are on a volleyball team?
sport | How long is a marathon in kilometres?
maths | How many sides does a hexagon have?
maths | What is the square of 12?
language | What does the idiom "a piece of cake" mean?
language | What is the plural of "cactus"?
technology | What does CPU stand for?
technology | Who founded Microsoft?
business | What does CEO stand for?
cooking | What is the main ingredient of hummus?
cooking | Which country does paella come from?
health | Which vitamin does sunlight help the body make?
programming | What does URL stand for?
arts | Who painted the ceiling of the Sistine Chapel?
arts | How many strings does a standard guitar have?
science | What is the freezing point of water in Celsius?
travel | Which country has the largest population?
travel | How many time zones does Russia have?
"""),
    Family("suggest", ("Suggest ways to {0}.", "Suggest {n} ways to {0}.", "Suggest some ways to {0}."), """
travel | reduce traffic in a city centre
nature | reduce plastic waste at home
business | improve customer service in a restaurant
technology | make a website load faster
health | add more vegetables to your meals
sport | make a school sports day more inclusive
language | encourage children to read more
language | practise speaking a new language every day
science | make a science lesson more hands-on
maths | make learning fractions fun
cooking | use up leftover bread
history | teach history in an engaging way
programming | reduce the memory a program uses
travel | keep children entertained on a long car journey
business | save energy in an office
business | celebrate a colleague's retirement
"""),
    Family("create", ("Create {0}.", "Design {0}.", "Construct {0}."), """
health | a seven-day walking plan for a beginner
cooking | a weekly meal plan for a family of four
travel | a three-day itinerary for Rome
maths | a quiz with five questions about fractions
science | a quiz of three questions about the solar system
history | a timeline of the main events of the Renaissance
business | a simple budget for a school fundraising event
technology | a checklist for setting up a new laptop
arts | a lesson plan for teaching children to paint with watercolours
sport | a warm-up routine for a football practice
language | a list of ten vocabulary words for a beginners' French class
nature | a poster encouraging people to plant trees
business | a logo concept for a bicycle repair shop
travel | a packing list for a ski holiday
maths | a score sheet for a school quiz night
"""),
    Family("calculate", ("{0}",), """
maths | Calculate the area of a circle with a radius of 4 centimetres.
maths | Convert 3.5 hours into minutes.
maths | Solve for x: 3x + 7 = 22.
maths | Find the average of the following numbers: 12, 18, 25, 30, 45.
maths | What is 12% of 250?
maths | Calculate the perimeter of a rectangle that is 8 m long and 3 m wide.
maths | Express 0.625 as a fraction in its simplest form.
maths | Simplify the expression 4(x + 2) - 3x.
maths | Find the next number in the sequence: 2, 6, 18, 54, ...
science | Convert 30 degrees Celsius to Fahrenheit.
business | Calculate the total cost of 3 notebooks at $2.50 each and 2 pens at $1.20 each.
business | A jacket costs £80 and its price rises by 10%. What is the new price?
travel | A train travels 180 kilometres in 2 hours. What is its average speed?
cooking | A recipe needs 250 grams of flour for 4 people. How much flour is needed for 6 people?
sport | A runner completes 5 laps of a 400-metre track. How many kilometres has she run?
health | If I walk 8,000 steps a day, how many steps do I walk in a week?
maths | Round 7.4862 to one decimal place.
maths | Write the number 2,450 in words.
maths | Is 2024 a leap year? Explain how you know.
"""),
    Family("tweet", ("Compose a tweet about {0}.", "Write a tweet announcing {0}.",
                     "Write a social media post about {0}."), """
technology | the launch of a new recycling app
sport | a local team winning the regional cup
cooking | a new bakery opening in town
nature | the first day of spring
arts | an art exhibition at the town library
science | a public stargazing night at the observatory
"""),
    Family("email", ("Write a short email to {0}.", "Compose an email to {0}.", "Write a polite email to {0}."), """
business | a colleague asking to move a meeting to Friday
travel | a hotel asking whether breakfast is included
language | a teacher thanking her for an interesting lesson
health | a gym asking about its opening hours
business | a customer confirming that their order has been sent
programming | a teammate asking for feedback on a pull request
"""),
    Family("product", ("Write a product description for {0}.", "Write a short advertisement for {0}."), """
technology | a pair of wireless headphones
cooking | a stainless steel kettle
sport | a lightweight yoga mat
nature | a bird feeder made from recycled wood
arts | a set of watercolour paints for beginners
travel | a foldable travel backpack
"""),
    Family("note", ("Write a thank-you note to {0}.", "Write a short thank-you message to {0}."), """
cooking | a friend who cooked dinner for you
business | a mentor who helped you prepare for an interview
sport | a coach at the end of the season
"""),
    Family("title", ("Suggest a catchy headline for a news story about {0}.",
                     "Generate a title for a blog post about {0}.", "Write a headline for an article about {0}."), """
technology | a town that switched all its street lights to LEDs
science | a student who built a weather station at school
sport | a ninety-year-old who finished a marathon
cooking | the rise of plant-based burgers
travel | a village that offers tourists free guided walks
nature | the return of otters to a city river
arts | a library that lends out musical instruments
business | a family bookshop celebrating its fiftieth anniversary
"""),
    Family("reasons", ("Give {n} reasons to {0}.", "Give reasons to {0}.", "Provide two arguments for why people should {0}."), """
nature | adopt a pet from an animal shelter
language | learn a second language
health | take the stairs instead of the lift
travel | visit New Zealand
sport | join a local sports club
arts | learn to play a musical instrument
programming | learn programming at school
business | offer employees flexible working hours
science | study astronomy
history | visit a history museum
language | keep a journal
health | eat breakfast every day
"""),
    Family("example", ("Provide an example of {0}.", "Give an example of {0}."), """
language | a metaphor
language | a simile about the ocean
science | a physical change in everyday life
science | a renewable resource
programming | a loop in JavaScript
maths | an irrational number
nature | two animals that help each other survive
arts | a famous piece of classical music
history | an invention that changed daily life
business | a business that sells a subscription
language | a palindrome
language | onomatopoeia
"""),
    Family("outline", ("Outline the steps to {0}.", "Outline the main steps needed to {0}.",
                       "List the steps to {0}."), """
cooking | bake a loaf of bread
technology | update the software on a laptop
nature | plant a tree
business | write a business plan
programming | create a simple website
travel | apply for a passport
arts | make a simple clay bowl
sport | prepare for a first 10K race
science | grow crystals from salt
language | write a persuasive essay
nature | train a puppy to sit
"""),
    Family("identify", ("{0}",), """
language | Identify the verb in the following sentence: The cat slept on the warm windowsill.
language | Find the adjectives in this sentence: The tall girl wore a bright yellow raincoat.
nature | Identify the odd one out: oak, maple, tulip, birch.
maths | Identify the odd one out: 3, 5, 9, 11, 13.
cooking | Identify the odd one out: basil, parsley, cinnamon, mint.
science | Identify the odd one out: Mercury, Venus, the Moon, Mars.
arts | Identify the odd one out: Picasso, Monet, Mozart, Van Gogh.
language | Identify the type of the following sentence: Please close the door.
language | Identify the subject of this sentence: The old bridge crosses the river near the church.
history | Identify the main idea of this sentence: The steam engine changed how goods were made and moved.
business | What is the main idea of the following statement? Customers are more likely to return when staff remember their names.
"""),
    Family("sentiment", ("Determine the sentiment of the following review: {0}",
                         "Classify the sentiment of this sentence as positive, negative or neutral: {0}",
                         "Is the following review positive or negative? {0}"), """
cooking | The pasta was cold and the service was very slow.
travel | Our room was spotless and the staff were wonderful.
technology | The battery lasts all day, but the screen is a bit dim.
arts | The film was beautifully made and the music was moving.
sport | The stadium was easy to reach and our seats had a great view.
business | Delivery took three weeks and nobody answered my emails.
health | The yoga class was relaxing and the teacher was very patient.
language | The book started slowly, but I loved the ending.
nature | The park was crowded and there was litter everywhere.
"""),
    Family("complete", ("{0}",), """
science | Fill in the blank: Plants take in carbon dioxide and release ____.
nature | Complete the sentence: The largest ocean on Earth is the ...
language | Complete the following sentence: Reading every day helps me ...
maths | Fill in the blank: A triangle with three equal sides is called an ____ triangle.
history | Complete the sentence: The first printed books in Europe were made using ...
"""),
    Family("arrange", ("{0}",), """
language | Put the following words in alphabetical order: pear, apple, mango, cherry, banana.
maths | Arrange these numbers from smallest to largest: 0.5, 1/3, 0.75, 2/5.
history | Put these events in chronological order: the first Moon landing, the invention of the printing press, the building of the pyramids.
language | Rearrange these words to form a sentence: park the to walked we.
cooking | Given the following ingredients, suggest a dish: eggs, spinach, cheese, bread.
maths | Given the list of numbers 4, 19, 7, 23, 11, find the largest and the smallest.
arts | Write a riddle whose answer is a clock.
cooking | Write a conversation between two friends planning a camping trip.
travel | Pretend you are a tour guide in Lisbon and welcome a group of visitors.
science | Generate three questions a teacher might ask about volcanoes.
"""),
)


def project_prompts():
    """Every prompt of the project's other sets, and those that are held out (val or test)."""
    every = P.harmful() + P.harmless() + P.contrast_harmful() + P.lookalike_extras() + P.harmless_train_extra()
    return every, [p for p in every if p.split in ("val", "test")]


def check_benign(family: Family) -> None:
    for text in family.templates + tuple(" ".join(slots) for _, slots in family.lines()):
        if blocked := blocked_words(text):
            raise ValueError(f"{family.task}: {text!r} holds {blocked}; rewrite it")


def generate(seed: int = SEED) -> tuple[list[dict], dict]:
    """``(rows, counts)``: one training instruction per bank line, and how many lines were dropped.

    Each bank line tries its family's templates in a seeded order and keeps the first
    instruction that repeats no prompt of the project or of this set and is far from every
    held-out prompt of the project; a line with none is dropped."""
    rng = random.Random(seed)
    every, heldout = project_prompts()
    seen = {normalise_text(p.text) for p in every}
    heldout_words = [content_words(p.text) for p in heldout]
    kept, dropped = [], []
    for family in FAMILIES:
        check_benign(family)
        for topic, slots in family.lines():
            n = rng.choice(NUMBERS)
            texts = [t.format(*slots, n=n) for t in rng.sample(family.templates, len(family.templates))]
            text = next((t for t in texts if normalise_text(t) not in seen and closest(t, heldout_words) < FAR), None)
            if text is None:
                dropped.append(texts[0])
                continue
            seen.add(normalise_text(text))
            kept.append({"instruction": text, "category": topic, "task": family.task})
    rng.shuffle(kept)
    return kept, {"bank_lines": len(kept) + len(dropped), "dropped_near_heldout": len(dropped)}


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")


def main() -> None:
    rows, counts = generate()
    write_jsonl(DATA_DIR / "everyday_train_templated.jsonl", rows)
    print(f"everyday templated training prompts: {len(rows)} ({counts})")


if __name__ == "__main__":
    main()
